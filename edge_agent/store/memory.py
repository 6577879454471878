"""In-memory store: the reference behaviour for tests and for running without a disk.

Its "disk" usage is an estimate of the bytes its rows would take, so the disk-budget logic
can be exercised against it exactly as against SQLite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.batch import CleanBatch
from edge_agent.pipeline.cleaning import CleanRecord, Quarantined
from edge_agent.store.base import (
    MODEL_EVENTS,
    MODEL_HISTORY_KEEP,
    BatchScores,
    ModelEvent,
    ModelEventKind,
    OutboxEntry,
    QuarantineEntry,
    ScoredRecord,
    StoreError,
    empty_dataset,
)


class InMemoryAgentStore:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._records: dict[str, CleanRecord] = {}  # insertion order = arrival order
        # record id -> (model version, score, alert, at): the record's prediction, as in its SQLite row
        self._scored: dict[str, tuple[int, float, bool, float]] = {}
        self._labels: dict[str, int] = {}
        self._quarantine: list[QuarantineEntry] = []
        self._quarantine_seq = 0
        self._models: list[ModelEvent] = []
        self._training: list[tuple[str, int, int, float | None, float]] = []
        self._outbox: dict[int, tuple[OutboxEntry, tuple[str, ...]]] = {}  # insertion order = id order
        self._outbox_seq = 0

    def add_records(self, batch: Sequence[CleanRecord]) -> list[CleanRecord]:
        new: list[CleanRecord] = []
        with self._lock:
            for record in batch:
                if record.record_id not in self._records:
                    self._records[record.record_id] = record
                    new.append(record)
        return new

    def add_batch(self, batch: CleanBatch, scores: BatchScores | None = None) -> CleanBatch:
        with self._lock:
            new = self.add_records(batch.records())
            if scores is not None and new:
                now = time.time()
                fresh = {r.record_id for r in new}
                for rid, score, alert in zip(batch.record_ids, scores.scores, scores.alerts, strict=True):
                    if rid in fresh:
                        fresh.discard(rid)  # a second copy in the same batch was not stored
                        self._scored[rid] = (scores.model_version, score, alert, now)
        return CleanBatch.from_records(new, batch.width)

    def has_record(self, record_id: str) -> bool:
        return record_id in self._records

    def unscored_records(self, limit: int) -> list[CleanRecord]:
        with self._lock:
            out: list[CleanRecord] = []
            for rid, record in self._records.items():
                if rid not in self._scored:
                    out.append(record)
                    if len(out) >= limit:
                        break
            return out

    def add_predictions(self, model_version: int, predictions: Sequence[ScoredRecord]) -> None:
        now = time.time()
        with self._lock:
            for p in predictions:
                if p.record_id in self._records:
                    self._scored[p.record_id] = (model_version, p.score, p.alert, now)

    def add_labels(self, labels: Sequence[tuple[str, int]]) -> int:
        new = 0
        with self._lock:
            for record_id, label in labels:
                new += record_id not in self._labels
                self._labels[record_id] = int(label)
        return new

    def quarantine(self, items: Sequence[Quarantined]) -> None:
        now = time.time()
        with self._lock:
            for q in items:
                self._quarantine_seq += 1  # not len()+1: eviction must not make ids repeat
                entry = QuarantineEntry(self._quarantine_seq, q.record_id, q.reason, q.raw, now)
                self._quarantine.append(entry)

    def recent_quarantine(self, limit: int = 100) -> list[QuarantineEntry]:
        with self._lock:
            return list(reversed(self._quarantine[-limit:])) if limit > 0 else []

    def record_model_event(
        self, version: int | None, event: ModelEventKind, reason: str = "", sha256: str | None = None
    ) -> None:
        if event not in MODEL_EVENTS:
            raise StoreError(f"unknown model event {event!r}")
        with self._lock:
            self._models.append(ModelEvent(version, event, reason, sha256, time.time()))
            del self._models[:-MODEL_HISTORY_KEEP]

    def model_history(self, limit: int = 100) -> list[ModelEvent]:
        with self._lock:
            return list(reversed(self._models[-limit:])) if limit > 0 else []

    def labelled_dataset(self, width: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        with self._lock:
            rows = [
                (self._records[rid].values, label)
                for rid, label in self._labels.items()
                if rid in self._records and len(self._records[rid].values) == width
            ]
        if not rows:
            return empty_dataset(width)
        x = np.array([r[0] for r in rows], dtype=np.float64).reshape(len(rows), width)
        return x, np.array([r[1] for r in rows], dtype=np.float64)

    def record_training(self, run_id: str, round: int, examples: int, loss: float | None) -> None:
        with self._lock:
            self._training.append((run_id, round, examples, loss, time.time()))

    def trained_examples(self) -> int:
        with self._lock:
            return sum(t[2] for t in self._training)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "records": len(self._records),
                "quarantined": len(self._quarantine),
                "predictions": len(self._scored),
                "labels": len(self._labels),
                "trained_examples": sum(t[2] for t in self._training),
                "models_rejected": sum(1 for m in self._models if m.event == "rejected"),
            }

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """No other thread sees the block half done; there is no disk to crash halfway through."""
        with self._lock:
            yield

    # -- outbox ----------------------------------------------------------------------------

    def outbox_add(
        self, topic: str, payload: bytes, record_ids: Sequence[str] = (), max_rows: int | None = None
    ) -> tuple[int, int]:
        with self._lock:
            self._outbox_seq += 1
            entry = OutboxEntry(self._outbox_seq, topic, bytes(payload), time.time())
            refs = tuple(record_ids)
            self._outbox[entry.id] = (entry, refs)
            dropped = 0
            if max_rows is not None:
                while len(self._outbox) > max(max_rows, 1):
                    self._remove_entry(next(iter(self._outbox)))
                    dropped += 1
        return entry.id, dropped

    def _remove_entry(self, entry_id: int) -> bool:
        return self._outbox.pop(entry_id, None) is not None

    def outbox_delete(self, entry_id: int) -> bool:
        with self._lock:
            return self._remove_entry(entry_id)

    def outbox_delete_many(self, entry_ids: Sequence[int]) -> int:
        with self._lock:
            return sum(self._remove_entry(i) for i in entry_ids)

    def outbox_pending(self, limit: int = 1000, after_id: int = 0) -> list[OutboxEntry]:
        with self._lock:
            return [e for e, _ in self._outbox.values() if e.id > after_id][: max(limit, 0)]

    def outbox_count(self) -> int:
        with self._lock:
            return len(self._outbox)

    # -- disk budget -------------------------------------------------------------------------

    def disk_usage(self) -> int:
        return self.live_bytes()

    def live_bytes(self) -> int:
        with self._lock:
            return (
                sum(64 + len(rid) + 8 * len(r.values) for rid, r in self._records.items())
                + 32 * len(self._scored)
                + sum(24 + len(rid) for rid in self._labels)
                + sum(48 + len(q.reason) + len(q.raw) for q in self._quarantine)
                + sum(
                    32 + len(e.topic) + len(e.payload) + sum(len(r) for r in refs) for e, refs in self._outbox.values()
                )
            )

    def evict_shipped(self, limit: int) -> int:
        with self._lock:
            # Like the SQLite store: pending entries' ids are gathered when eviction asks, not
            # kept up to date on every write and ack.
            pending = {rid for _, refs in self._outbox.values() for rid in refs}
            victims: list[str] = []
            for rid in self._records:
                if len(victims) >= limit:
                    break
                if rid in self._scored and rid not in pending:
                    victims.append(rid)
            for rid in victims:
                del self._records[rid]
                self._scored.pop(rid, None)
                self._labels.pop(rid, None)
            return len(victims)

    def evict_quarantine(self, limit: int) -> int:
        with self._lock:
            n = min(max(limit, 0), len(self._quarantine))
            del self._quarantine[:n]
            return n

    def compact(self) -> None:
        """Python frees the memory itself."""

    def close(self) -> None:
        """Nothing to release."""
