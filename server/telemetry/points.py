"""Telemetry points: one row per device status, and the rates derived from them.

A point keeps the agent's *cumulative* counters, not rates. Rates (records/s, quarantine
rate) are computed on read from the counter deltas between two kept points, so thinning
old points (``server.telemetry.retention``) loses resolution but never accuracy: the rate
between two kept points is the exact average over the interval they span. A counter that
went down (an agent restarted on a fresh store) makes that one interval unknown (None).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.schemas import DeviceStatus, QuarantineSample


@dataclass(frozen=True)
class TelemetryPoint:
    device_id: str
    at: float
    ingested: int
    quarantined: int
    scored: int
    serving_version: int | None = None
    scoring_latency_ms: float | None = None
    drift_score: float | None = None
    queue_depth: int = 0
    kind: str = "heartbeat"
    drift_feature: str | None = None  # the feature whose mean moved most (its shift in drift_shift)
    drift_shift: float | None = None


@dataclass(frozen=True)
class QuarantineEntry:
    device_id: str
    at: float
    record_id: str | None
    reason: str
    excerpt: str

    @property
    def key(self) -> tuple[float, str | None, str]:
        """Statuses repeat the newest samples: this identifies one sample across them."""
        return (self.at, self.record_id, self.reason)


@dataclass(frozen=True)
class Rates:
    records_per_s: float | None
    quarantine_rate: float | None
    span_s: float


def point_from_status(status: DeviceStatus, at: float) -> TelemetryPoint:
    c = status.counters
    return TelemetryPoint(
        device_id=status.device_id,
        at=at,
        ingested=c.ingested,
        quarantined=c.quarantined,
        scored=c.scored,
        serving_version=status.model_version,
        scoring_latency_ms=status.scoring_latency_ms_p50,
        drift_score=None if status.drift is None else status.drift.score,
        queue_depth=status.queue_depth,
        kind=status.kind,
        drift_feature=None if status.drift is None else status.drift.worst_feature,
        drift_shift=None if status.drift is None or status.drift.worst_feature is None else status.drift.worst_shift,
    )


def quarantine_entries(device_id: str, samples: Sequence[QuarantineSample]) -> list[QuarantineEntry]:
    return [QuarantineEntry(device_id, s.at, s.record_id, s.reason, s.excerpt) for s in samples]


def rates(points: Sequence[TelemetryPoint]) -> Rates:
    """Average rates over consecutive points (sorted by time), skipping counter resets.

    records/s counts every record that arrived (accepted + quarantined); the quarantine
    rate is the share of those that were quarantined.
    """
    arrived = quarantined = 0
    span = 0.0
    for a, b in itertools.pairwise(points):
        dt = b.at - a.at
        di, dq = b.ingested - a.ingested, b.quarantined - a.quarantined
        if dt <= 0 or di < 0 or dq < 0:
            continue
        arrived += di + dq
        quarantined += dq
        span += dt
    if span <= 0:
        return Rates(None, None, 0.0)
    return Rates(arrived / span, (quarantined / arrived) if arrived else None, span)


def series(points: Sequence[TelemetryPoint]) -> list[dict[str, Any]]:
    """One chart row per point after the first: rates over the interval that ends there."""
    rows: list[dict[str, Any]] = []
    for a, b in itertools.pairwise(points):
        r = rates([a, b])
        rows.append(
            {
                "at": b.at,
                "records_per_s": _round(r.records_per_s),
                "quarantine_rate": _round(r.quarantine_rate),
                "scoring_latency_ms": _round(b.scoring_latency_ms),
                "drift_score": _round(b.drift_score),
                "drift_feature": b.drift_feature,
                "queue_depth": b.queue_depth,
                "serving_version": b.serving_version,
            }
        )
    return rows


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)
