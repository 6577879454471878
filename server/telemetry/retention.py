"""Bounded telemetry history: recent points at full resolution, older ones thinned, the oldest dropped.

Without a bound, a fleet that reports every few seconds grows the registry forever. The
policy keeps every point of the last ``raw_s`` seconds, one point per ``bucket_s`` (the
newest of each bucket) up to ``keep_s``, nothing older, and never more than ``max_points``
per device. Because points hold cumulative counters (``server.telemetry.points``), a thinned
history still gives exact average rates between the points it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RetentionPolicy:
    raw_s: float = 3600.0
    bucket_s: float = 60.0
    keep_s: float = 7 * 24 * 3600.0
    max_points: int = 20_000

    def __post_init__(self) -> None:
        if not (0 < self.raw_s <= self.keep_s) or self.bucket_s <= 0 or self.max_points < 2:
            raise ValueError(f"invalid retention policy {self}")


def points_to_drop(ats: Sequence[float], now: float, policy: RetentionPolicy) -> list[int]:
    """Indices (into ``ats``, sorted ascending) of the points the policy drops."""
    drop: set[int] = set()
    last_in_bucket: dict[int, int] = {}
    for i, at in enumerate(ats):
        age = now - at
        if age > policy.keep_s:
            drop.add(i)
        elif age > policy.raw_s:
            bucket = int(at // policy.bucket_s)
            previous = last_in_bucket.get(bucket)
            if previous is not None:
                drop.add(previous)  # a newer point of the same bucket replaces it
            last_in_bucket[bucket] = i
    kept = [i for i in range(len(ats)) if i not in drop]
    excess = len(kept) - policy.max_points
    if excess > 0:
        drop.update(kept[:excess])
    return sorted(drop)
