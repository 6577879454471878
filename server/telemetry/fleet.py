"""The dashboard's fleet and model views, pure: registry records + telemetry in, JSON-ready dicts out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from server.registry.records import DeviceRecord, ModelVersionRecord
from server.telemetry.points import TelemetryPoint, rates

# Rates shown for "now" average over this many recent points (a minute at 5 s heartbeats).
RATE_POINTS = 12


def device_row(d: DeviceRecord, recent: Sequence[TelemetryPoint], now: float, online_window_s: float) -> dict[str, Any]:
    # A revoked device is no longer trusted: whatever it still says, it is not part of the fleet.
    online = d.online(now, online_window_s) and not d.revoked
    r = rates(recent)
    drifted = next((p for p in reversed(recent) if p.drift_score is not None), None)
    return {
        "device_id": d.device_id,
        "online": online,
        "status": d.status,
        "revoked": d.revoked,
        "health": d.health,
        "last_seen": d.last_seen,
        "serving_version": d.serving_version,
        # An offline device's last rate is history, not throughput.
        "records_per_s": None if r.records_per_s is None or not online else round(r.records_per_s, 3),
        "quarantine_rate": None if r.quarantine_rate is None else round(r.quarantine_rate, 6),
        "drift_score": None if drifted is None else drifted.drift_score,
        "drift_feature": None if drifted is None else drifted.drift_feature,
        "drift_shift": None if drifted is None else drifted.drift_shift,
        "scoring_latency_ms": d.scoring_latency_ms_p50,
        "queue_depth": d.queue_depth,
        "counters": d.counters,
        "last_rejection": d.last_rejection,
    }


def version_distribution(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Share of the *online* fleet serving each version (None = no model yet), newest first."""
    online = [r for r in rows if r["online"]]
    counts = Counter(r["serving_version"] for r in online)
    total = len(online)
    ordered = sorted(counts.items(), key=lambda kv: (kv[0] is None, -(kv[0] or 0)))
    return [{"version": v, "devices": n, "share": round(n / total, 6) if total else 0.0} for v, n in ordered]


def fleet_summary(rows: Sequence[Mapping[str, Any]], latest_published: int | None, now: float) -> dict[str, Any]:
    online = sum(1 for r in rows if r["online"])
    rps = [r["records_per_s"] for r in rows if r["online"] and r["records_per_s"] is not None]
    return {
        "at": now,
        "devices": len(rows),
        "online": online,
        "offline": len(rows) - online,
        "latest_published": latest_published,
        "on_latest": sum(1 for r in rows if r["online"] and r["serving_version"] == latest_published),
        "records_per_s": round(sum(rps), 3) if rps else None,
        "versions": version_distribution(rows),
        "rows": list(rows),
    }


def lineage(models: Sequence[ModelVersionRecord], version: int) -> list[int]:
    """The version, its parent, its parent's parent... (stops on a cycle or a gap)."""
    by_version = {m.version: m for m in models}
    chain: list[int] = []
    current: int | None = version
    while current is not None and current in by_version and current not in chain:
        chain.append(current)
        current = by_version[current].parent_version
    return chain


def compare_models(
    a: ModelVersionRecord, b: ModelVersionRecord, models: Sequence[ModelVersionRecord]
) -> dict[str, Any]:
    """Side by side: every holdout metric of either, with b - a, and where their lineages meet."""
    names = sorted(set(a.metrics) | set(b.metrics))
    metrics = []
    for name in names:
        va, vb = a.metrics.get(name), b.metrics.get(name)
        metrics.append(
            {"name": name, "a": va, "b": vb, "delta": None if va is None or vb is None else round(vb - va, 6)}
        )
    la, lb = lineage(models, a.version), lineage(models, b.version)
    common = next((v for v in la if v in lb), None)
    fields = ["parent_version", "training_run_id", "created", "sha256", "size", "signer", "stage"]
    return {
        "a": a.version,
        "b": b.version,
        "metrics": metrics,
        "fields": [{"name": f, "a": getattr(a, f), "b": getattr(b, f)} for f in fields],
        "lineage": {"a": la, "b": lb, "common_ancestor": common},
        "features": {
            "a": len(a.manifest.get("feature_spec", {}).get("fields", [])),
            "b": len(b.manifest.get("feature_spec", {}).get("fields", [])),
        },
    }
