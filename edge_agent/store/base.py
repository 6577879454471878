"""The store interface every implementation (in-memory, SQLite) honours.

The agent writes; the Flower ClientApp (another process) reads the labelled data set and
records its training runs, which is why ``labelled_dataset`` and ``record_training`` are
part of the interface and not of the agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.batch import CleanBatch
from edge_agent.pipeline.cleaning import CleanRecord, Quarantined
from shared.errors import FedforgeError

ModelEventKind = Literal["installed", "rejected", "rolled_back"]
MODEL_EVENTS: tuple[ModelEventKind, ...] = ("installed", "rejected", "rolled_back")
# Model events kept (the newest): each forged or broken manifest adds one, and the disk
# budget evicts records, not this history.
MODEL_HISTORY_KEEP = 1000

COUNT_KEYS = ("records", "quarantined", "predictions", "labels", "trained_examples", "models_rejected")


class StoreError(FedforgeError):
    """The store cannot do what was asked (e.g. a write on a read-only store)."""


class StoreUnavailableError(StoreError):
    """The store cannot write for now (disk full, I/O error, locked past the busy timeout);
    the write left nothing behind. Ingest is then left with the broker, unacknowledged, to be
    delivered again: acknowledging it would lose it."""


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: int
    record_id: str | None
    reason: str
    raw: bytes
    at: float


@dataclass(frozen=True, slots=True)
class ModelEvent:
    version: int | None
    event: ModelEventKind
    reason: str
    sha256: str | None
    at: float


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A message written before it is published and deleted once the broker acknowledged it."""

    id: int
    topic: str
    payload: bytes
    created_at: float


@dataclass(frozen=True, slots=True)
class ScoredRecord:
    record_id: str
    score: float
    alert: bool


@dataclass(frozen=True, slots=True)
class BatchScores:
    """One model's scores of a batch's rows, in row order, stored with the rows themselves."""

    model_version: int
    scores: Sequence[float]
    alerts: Sequence[bool]

    def take(self, rows: Sequence[int]) -> BatchScores:
        """The scores of ``rows`` only, in that order."""
        return BatchScores(self.model_version, [self.scores[i] for i in rows], [self.alerts[i] for i in rows])


class AgentStore(Protocol):
    def add_records(self, batch: Sequence[CleanRecord]) -> list[CleanRecord]:
        """Store new records; returns those that were not stored before (idempotent)."""
        ...

    def add_batch(self, batch: CleanBatch, scores: BatchScores | None = None) -> CleanBatch:
        """``add_records`` for a column-wise batch (the agent's ingest path); returns the new rows.

        With ``scores`` the rows are stored already scored: a record holds its prediction, so
        scoring at ingest costs no second write per record. A row that was stored before keeps
        what it had."""
        ...

    def has_record(self, record_id: str) -> bool: ...

    def unscored_records(self, limit: int) -> list[CleanRecord]:
        """Oldest stored records without a prediction (the backlog to score)."""
        ...

    def add_predictions(self, model_version: int, predictions: Sequence[ScoredRecord]) -> None:
        """Score stored records (the backlog); a record keeps its latest prediction, ids not
        stored are ignored."""
        ...

    def add_labels(self, labels: Sequence[tuple[str, int]]) -> int:
        """Store (record_id, label) pairs (a later label wins); returns how many records got a first label."""
        ...

    def quarantine(self, items: Sequence[Quarantined]) -> None: ...

    def recent_quarantine(self, limit: int = 100) -> list[QuarantineEntry]: ...

    def record_model_event(
        self, version: int | None, event: ModelEventKind, reason: str = "", sha256: str | None = None
    ) -> None: ...

    def model_history(self, limit: int = 100) -> list[ModelEvent]:
        """Newest first."""
        ...

    def labelled_dataset(self, width: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(X raw values (n, width), y) of records that have a label and ``width`` values."""
        ...

    def record_training(self, run_id: str, round: int, examples: int, loss: float | None) -> None: ...

    def trained_examples(self) -> int:
        """Examples trained on so far (written by the ClientApp, possibly another process)."""
        ...

    def counts(self) -> dict[str, int]:
        """Keys: ``COUNT_KEYS``."""
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """The store's writes inside the block are kept together or not at all (one
        transaction): the agent stores a chunk, its outbox entry and its predictions at once,
        so a crash cannot keep the records and lose the prediction message."""
        ...

    # -- outbox: outgoing messages that must survive a crash until the broker acks them ----

    def outbox_add(
        self, topic: str, payload: bytes, record_ids: Sequence[str] = (), max_rows: int | None = None
    ) -> tuple[int, int]:
        """Append a message referencing ``record_ids`` (protected from eviction while pending).

        Returns (entry id, how many oldest entries were dropped to keep at most ``max_rows``).
        Ids are never reused, so a late ack for a dropped entry cannot delete a newer one.
        """
        ...

    def outbox_delete(self, entry_id: int) -> bool:
        """Forget an acknowledged entry; False when it was already gone."""
        ...

    def outbox_delete_many(self, entry_ids: Sequence[int]) -> int:
        """Forget acknowledged entries in one transaction; how many were still there."""
        ...

    def outbox_pending(self, limit: int = 1000, after_id: int = 0) -> list[OutboxEntry]:
        """Entries with an id above ``after_id``, oldest first."""
        ...

    def outbox_count(self) -> int: ...

    # -- disk budget ---------------------------------------------------------------------

    def disk_usage(self) -> int:
        """Bytes the store occupies now (cheap: file sizes, no query)."""
        ...

    def live_bytes(self) -> int:
        """Bytes held by live data (what eviction can reduce; the file shrinks on ``compact``)."""
        ...

    def evict_shipped(self, limit: int) -> int:
        """Delete up to ``limit`` oldest records whose predictions were delivered (scored and not
        referenced by a pending outbox entry), with their predictions and labels; returns how many."""
        ...

    def evict_quarantine(self, limit: int) -> int:
        """Delete up to ``limit`` oldest quarantine entries; returns how many."""
        ...

    def compact(self) -> None:
        """Give freed space back to the file system where the implementation can."""
        ...

    def close(self) -> None: ...


def empty_dataset(width: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    return np.empty((0, width), dtype=np.float64), np.empty((0,), dtype=np.float64)
