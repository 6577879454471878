"""The newest quarantined records, kept in memory for the agent's status report.

The store keeps every quarantined payload; the cloud only needs a small, bounded sample
to show an operator *why* records are being refused. Excerpts are cut short so a status
stays small and a hostile payload cannot inflate it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from edge_agent.pipeline import Quarantined
from shared.schemas import QuarantineSample

EXCERPT_CHARS = 160
REASON_CHARS = 300


def excerpt(payload: bytes, limit: int = EXCERPT_CHARS) -> str:
    text = payload[: limit * 4].decode("utf-8", errors="replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class QuarantineLog:
    def __init__(self, size: int = 10) -> None:
        self._samples: deque[QuarantineSample] = deque(maxlen=size)

    def add(self, items: Iterable[Quarantined], at: float | None = None) -> None:
        now = time.time() if at is None else at
        for q in list(items)[-(self._samples.maxlen or 0) :]:
            rid = q.record_id[:128] if q.record_id else None
            self._samples.append(
                QuarantineSample(at=now, record_id=rid, reason=q.reason[:REASON_CHARS], excerpt=excerpt(q.raw))
            )

    def recent(self) -> tuple[QuarantineSample, ...]:
        """Oldest first, at most ``size``."""
        return tuple(self._samples)
