"""What the agent reports about itself: counters and the scoring latency window."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass


class LatencyWindow:
    """Per-record scoring latency (ms) of the last ``size`` batches; the median is reported."""

    def __init__(self, size: int = 1000) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add_batch(self, seconds: float, records: int) -> None:
        if records > 0:
            self._values.append(seconds * 1000.0 / records)

    def p50(self) -> float | None:
        return float(statistics.median(self._values)) if self._values else None


@dataclass(slots=True)
class AgentCounters:
    ingested: int = 0
    quarantined: int = 0
    scored: int = 0
    labelled: int = 0
    models_rejected: int = 0
    # Since this process started (not rebuilt from the store, which no longer holds them).
    evicted_records: int = 0
    evicted_quarantine: int = 0

    @classmethod
    def from_store_counts(cls, counts: dict[str, int]) -> AgentCounters:
        """Counters survive restarts: they start from what the store already holds."""
        return cls(
            ingested=counts.get("records", 0),
            quarantined=counts.get("quarantined", 0),
            scored=counts.get("predictions", 0),
            labelled=counts.get("labels", 0),
            models_rejected=counts.get("models_rejected", 0),
        )
