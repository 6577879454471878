"""Both store implementations behave the same; SQLite also survives kill -9 and serves
a read-only reader in another process while the agent writes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from edge_agent.pipeline import CleanBatch, CleanRecord, Quarantined
from edge_agent.store import (
    AgentStore,
    BatchScores,
    InMemoryAgentStore,
    ScoredRecord,
    SqliteAgentStore,
    StoreError,
    StoreUnavailableError,
)
from edge_agent.store import sqlite as sqlite_store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentStore]:
    s: AgentStore = InMemoryAgentStore() if request.param == "memory" else SqliteAgentStore(tmp_path / "a.db")
    yield s
    s.close()


def rec(i: int, width: int = 3) -> CleanRecord:
    return CleanRecord(f"r{i}", float(i), tuple(float(i + j) / 10 for j in range(width)))


def test_add_records_is_idempotent(store: AgentStore) -> None:
    assert [r.record_id for r in store.add_records([rec(1), rec(2)])] == ["r1", "r2"]
    assert [r.record_id for r in store.add_records([rec(2), rec(3)])] == ["r3"]
    assert store.has_record("r1")
    assert not store.has_record("r9")
    assert store.counts()["records"] == 3


def test_add_batch_keeps_only_new_rows_exactly(store: AgentStore) -> None:
    store.add_records([rec(2)])
    batch = CleanBatch.from_records([rec(1), rec(2), rec(3), rec(3), rec(4)], 3)
    new = store.add_batch(batch)
    assert new.records() == [rec(1), rec(3), rec(4)]
    assert store.add_batch(CleanBatch.from_records([rec(5)], 3)).records() == [rec(5)]
    assert len(store.add_batch(CleanBatch.empty(3))) == 0
    assert store.unscored_records(10) == [rec(2), rec(1), rec(3), rec(4), rec(5)]  # values round-trip exactly
    assert store.counts()["records"] == 5


@pytest.mark.parametrize("size", [1, 63, 64, 65, 3 * 64 + 5])
def test_add_batch_across_statement_sizes(store: AgentStore, size: int) -> None:
    """SQLite inserts ROWS_PER_INSERT rows per statement and the rest in a shorter one: every
    size keeps exactly the new rows, in order, however the duplicates straddle statements."""
    assert sqlite_store.ROWS_PER_INSERT == 64
    stored = {i for i in range(0, size, 7)}  # already stored, in every statement
    store.add_records([rec(i) for i in sorted(stored)])
    ids = list(range(size))
    # second copies within the batch: one right after its first, one a statement later
    records = [rec(i) for i in ids] + [rec(i) for i in (size - 1, 0, 1) if i < size]
    new = store.add_batch(CleanBatch.from_records(records, 3))
    want = [rec(i) for i in ids if i not in stored]
    assert new.records() == want
    assert store.counts()["records"] == size
    assert store.add_batch(CleanBatch.from_records(records, 3)).records() == []


def test_add_batch_stores_each_row_with_its_own_score(tmp_path: Path) -> None:
    store = SqliteAgentStore(tmp_path / "a.db")
    try:
        store.add_records([rec(3), rec(70)])
        size = 2 * 64 + 9
        batch = CleanBatch.from_records([rec(i) for i in range(size)], 3)
        scores = [i / 1000 for i in range(size)]
        alerts = [i % 3 == 0 for i in range(size)]
        new = store.add_batch(batch, BatchScores(7, scores, alerts))
        assert new.record_ids == [f"r{i}" for i in range(size) if i not in (3, 70)]
        with closing(sqlite3.connect(tmp_path / "a.db")) as conn:
            rows = conn.execute(
                'SELECT record_id, ts, "values", model_version, score, alert FROM records ORDER BY rowid'
            ).fetchall()
    finally:
        store.close()

    def blob(i: int) -> bytes:
        return np.array(rec(i).values, dtype="<f8").tobytes()

    assert rows[:2] == [("r3", 3.0, blob(3), None, None, None), ("r70", 70.0, blob(70), None, None, None)]
    assert rows[2:] == [
        (f"r{i}", float(i), blob(i), 7, i / 1000, int(i % 3 == 0)) for i in range(size) if i not in (3, 70)
    ]


def test_unscored_backlog_in_arrival_order(store: AgentStore) -> None:
    store.add_records([rec(i) for i in range(5)])
    store.add_predictions(1, [ScoredRecord("r1", 0.2, False), ScoredRecord("r3", 0.9, True)])
    backlog = store.unscored_records(10)
    assert [r.record_id for r in backlog] == ["r0", "r2", "r4"]
    assert backlog[0] == rec(0)  # values round-trip exactly
    assert [r.record_id for r in store.unscored_records(2)] == ["r0", "r2"]
    assert store.counts()["predictions"] == 2


def test_labels_and_labelled_dataset(store: AgentStore) -> None:
    store.add_records([rec(1), rec(2), rec(3), rec(4, width=5)])
    assert store.add_labels([("r1", 1), ("r2", 0), ("r4", 1), ("unknown", 1)]) == 4
    assert store.add_labels([("r2", 1)]) == 0  # relabel: no new label, later wins
    x, y = store.labelled_dataset(3)
    assert x.dtype == np.float64
    assert x.shape == (2, 3)
    np.testing.assert_array_equal(x, np.array([rec(1).values, rec(2).values]))
    np.testing.assert_array_equal(y, [1.0, 1.0])
    x5, _ = store.labelled_dataset(5)
    assert x5.shape == (1, 5)
    assert store.labelled_dataset(7)[0].shape == (0, 7)
    assert store.counts()["labels"] == 4


def test_quarantine(store: AgentStore) -> None:
    store.quarantine([Quarantined(None, "broken JSON", b"{"), Quarantined("r1", "duplicate", b"{}")])
    recent = store.recent_quarantine(10)
    assert [(q.record_id, q.reason, q.raw) for q in recent] == [("r1", "duplicate", b"{}"), (None, "broken JSON", b"{")]
    assert len(store.recent_quarantine(1)) == 1
    assert store.counts()["quarantined"] == 2


def test_model_history_and_training(store: AgentStore) -> None:
    store.record_model_event(1, "installed", "", "ab" * 32)
    store.record_model_event(2, "rejected", "sha256 mismatch", None)
    store.record_model_event(None, "rejected", "malformed manifest")
    history = store.model_history()
    assert [(h.version, h.event) for h in history] == [(None, "rejected"), (2, "rejected"), (1, "installed")]
    assert history[1].reason == "sha256 mismatch"
    with pytest.raises(StoreError):
        store.record_model_event(3, "exploded")  # type: ignore[arg-type]
    store.record_training("run-1", 1, 100, 0.5)
    store.record_training("run-1", 2, 120, None)
    counts = store.counts()
    assert counts["trained_examples"] == 220
    assert store.trained_examples() == 220
    assert counts["models_rejected"] == 2


def _writer(path: str, n: int) -> None:
    s = SqliteAgentStore(path)
    for i in range(n):
        s.add_records([rec(i)])
        s.add_labels([(f"r{i}", i % 2)])
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no clean shutdown


def test_sqlite_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_writer, args=(str(path), 50))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    s = SqliteAgentStore(path)
    assert s.counts()["records"] == 50
    assert s.labelled_dataset(3)[0].shape == (50, 3)
    s.close()


def _reader(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    s = SqliteAgentStore(path, readonly=True)
    x, _ = s.labelled_dataset(3)
    s.record_training("run-x", 1, int(x.shape[0]), 0.1)
    try:
        s.add_records([rec(999)])
    except StoreError as exc:
        queue.put((int(x.shape[0]), str(exc)))
    s.close()


@pytest.mark.skipif(sys.platform != "linux", reason="fork-free spawn on Linux only")
def test_readonly_reader_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    writer = SqliteAgentStore(path)
    writer.add_records([rec(i) for i in range(10)])
    writer.add_labels([(f"r{i}", 1) for i in range(10)])
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_reader, args=(str(path), queue))
    proc.start()
    writer.add_records([rec(i) for i in range(10, 20)])  # agent keeps writing meanwhile
    rows, error = queue.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0
    assert rows >= 10
    assert "read-only" in error
    assert writer.trained_examples() == rows
    writer.close()


def test_readonly_needs_existing_db(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteAgentStore(tmp_path / "missing.db", readonly=True)


def test_a_store_that_cannot_write_now_says_so_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the write lock past the busy timeout is "not now", not a bug:
    StoreUnavailableError, with nothing half written."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)
    store = SqliteAgentStore(tmp_path / "agent.db")
    batch = CleanBatch(["a", "b"], np.array([1.0, 2.0]), np.ones((2, 3)))
    locker = sqlite3.connect(tmp_path / "agent.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailableError, match="locked"):
            store.add_batch(batch)
        with pytest.raises(StoreUnavailableError, match="locked"), store.atomic():
            store.add_batch(batch)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert store.counts()["records"] == 0
    assert len(store.add_batch(batch)) == 2  # and it writes again once it can
    store.close()


def test_an_error_that_is_not_about_the_disk_stays_what_it_is(tmp_path: Path) -> None:
    store = SqliteAgentStore(tmp_path / "agent.db")
    with pytest.raises(sqlite3.OperationalError, match="no such table"), store.atomic(), store._write() as conn:
        conn.execute("INSERT INTO nowhere VALUES (1)")
    store.close()


def test_the_model_history_keeps_only_the_newest_events(store: AgentStore) -> None:
    from edge_agent.store.base import MODEL_HISTORY_KEEP

    for i in range(MODEL_HISTORY_KEEP + 50):
        store.record_model_event(i, "rejected", f"forged {i}")
    history = store.model_history(limit=10 * MODEL_HISTORY_KEEP)
    assert len(history) == MODEL_HISTORY_KEEP
    assert (history[0].version, history[-1].version) == (MODEL_HISTORY_KEEP + 49, 50)
    assert store.counts()["models_rejected"] == MODEL_HISTORY_KEEP
