"""In-memory store: the reference behaviour for tests and for running without a disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.cleaning import CleanRecord, Quarantined
from edge_agent.store.base import (
    MODEL_EVENTS,
    ModelEvent,
    ModelEventKind,
    QuarantineEntry,
    ScoredRecord,
    StoreError,
    empty_dataset,
)


class InMemoryAgentStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, CleanRecord] = {}  # insertion order = arrival order
        self._scored: set[str] = set()
        self._predictions: list[tuple[str, int, float, bool, float]] = []
        self._labels: dict[str, int] = {}
        self._quarantine: list[QuarantineEntry] = []
        self._models: list[ModelEvent] = []
        self._training: list[tuple[str, int, int, float | None, float]] = []

    def add_records(self, batch: Sequence[CleanRecord]) -> list[CleanRecord]:
        new: list[CleanRecord] = []
        with self._lock:
            for record in batch:
                if record.record_id not in self._records:
                    self._records[record.record_id] = record
                    new.append(record)
        return new

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
                self._predictions.append((p.record_id, model_version, p.score, p.alert, now))
                self._scored.add(p.record_id)

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
                entry = QuarantineEntry(len(self._quarantine) + 1, q.record_id, q.reason, q.raw, now)
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
                "predictions": len(self._predictions),
                "labels": len(self._labels),
                "trained_examples": sum(t[2] for t in self._training),
                "models_rejected": sum(1 for m in self._models if m.event == "rejected"),
            }

    def close(self) -> None:
        """Nothing to release."""
