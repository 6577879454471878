"""Registry records -> JSON-ready dicts: the API's response shapes, pure and testable."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from server.api.errors import ApiNotFoundError
from server.registry.records import AuditEntry, DeviceRecord, ModelVersionRecord, Registry, RoundRecord, RunRecord

# Versions are 32-bit integers in the registry: a larger id is a 422, not a database error.
MAX_VERSION = 2**31 - 1
VersionPath = Annotated[int, Path(ge=1, le=MAX_VERSION)]


def model_view(m: ModelVersionRecord) -> dict[str, Any]:
    return {
        "task": m.task,
        "version": m.version,
        "parent_version": m.parent_version,
        "training_run_id": m.training_run_id,
        "created": m.created,
        "metrics": m.metrics,
        "sha256": m.sha256,
        "size": m.size,
        "signer": m.signer,
        "stage": m.stage,
    }


def fleet_device(registry: Registry, fleet: str, device_id: str) -> DeviceRecord:
    """The device, if it reports to this server's fleet; else a 404 (another fleet's device is not ours to show)."""
    device = registry.get_device(device_id)
    if device is None or device.fleet != fleet:
        raise ApiNotFoundError(f"device {device_id!r} not found in fleet {fleet!r}")
    return device


def device_view(d: DeviceRecord, now: float, online_window_s: float) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "fleet": d.fleet,
        "online": d.online(now, online_window_s),
        "status": d.status,
        "health": d.health,
        "last_seen": d.last_seen,
        "serving_version": d.serving_version,
        "pinned_version": d.pinned_version,
        "counters": d.counters,
        "queue_depth": d.queue_depth,
        "scoring_latency_ms_p50": d.scoring_latency_ms_p50,
        "signature_verified": d.signature_verified,
        "last_rejection": d.last_rejection,
        "revoked": d.revoked,
    }


def run_view(r: RunRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "flower_run_id": r.flower_run_id,
        "status": r.status,
        "rounds": r.rounds,
        "started": r.started,
        "finished": r.finished,
        "error": r.error,
        "published_version": r.published_version,
        "strategy": r.strategy,
    }


def round_view(r: RoundRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "round": r.round,
        "participants": r.participants,
        "failures": r.failures,
        "metrics": r.metrics,
        "duration_s": r.duration_s,
    }


def audit_view(e: AuditEntry) -> dict[str, Any]:
    return {"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "detail": e.detail}
