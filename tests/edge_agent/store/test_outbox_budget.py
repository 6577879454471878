"""Outbox and disk-budget behaviour, the same for both store implementations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from edge_agent.pipeline import CleanBatch, CleanRecord, Quarantined
from edge_agent.store import AgentStore, BatchScores, InMemoryAgentStore, ScoredRecord, SqliteAgentStore
from edge_agent.store.base import StoreError
from edge_agent.store.budget import enforce_budget
from edge_agent.store.sqlite import SCHEMA_VERSION


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentStore]:
    s: AgentStore = InMemoryAgentStore() if request.param == "memory" else SqliteAgentStore(tmp_path / "a.db")
    yield s
    s.close()


def rec(i: int, width: int = 8) -> CleanRecord:
    return CleanRecord(f"r{i}", float(i), tuple(float(i + j) for j in range(width)))


def scored(*ids: int) -> list[ScoredRecord]:
    return [ScoredRecord(f"r{i}", 0.5, False) for i in ids]


def remaining(store: AgentStore, n: int) -> list[str]:
    return [f"r{i}" for i in range(n) if store.has_record(f"r{i}")]


# -- outbox ---------------------------------------------------------------------------------


def test_outbox_add_list_delete(store: AgentStore) -> None:
    ids = [store.outbox_add("t/p", f"m{i}".encode(), [f"r{i}"])[0] for i in range(3)]
    assert ids == sorted(ids)
    assert store.outbox_count() == 3
    pending = store.outbox_pending()
    assert [(e.id, e.topic, e.payload) for e in pending] == [(ids[i], "t/p", f"m{i}".encode()) for i in range(3)]
    assert [e.id for e in store.outbox_pending(limit=1, after_id=ids[0])] == [ids[1]]
    assert store.outbox_delete(ids[1]) is True
    assert store.outbox_delete(ids[1]) is False
    assert [e.payload for e in store.outbox_pending()] == [b"m0", b"m2"]
    assert store.outbox_count() == 2


def test_outbox_is_bounded_oldest_dropped_and_ids_never_reused(store: AgentStore) -> None:
    first, dropped = store.outbox_add("t", b"a", max_rows=2)
    assert dropped == 0
    store.outbox_add("t", b"b", max_rows=2)
    third, dropped = store.outbox_add("t", b"c", max_rows=2)
    assert dropped == 1
    assert [e.payload for e in store.outbox_pending()] == [b"b", b"c"]
    for e in store.outbox_pending():
        store.outbox_delete(e.id)
    again, _ = store.outbox_add("t", b"d", max_rows=2)
    assert again > third > first  # a late ack for a dropped entry cannot delete a new one
    assert store.outbox_delete(first) is False
    assert store.outbox_count() == 1


# -- eviction -------------------------------------------------------------------------------


def test_evict_shipped_oldest_first_and_never_pending_or_unscored(store: AgentStore) -> None:
    store.add_records([rec(i) for i in range(6)])
    entry, _ = store.outbox_add("t", b"batch with r1", ["r1"])
    store.add_predictions(1, scored(0, 1, 2, 4))
    store.add_labels([("r0", 1), ("r2", 0), ("r3", 1)])
    assert store.evict_shipped(2) == 2
    assert remaining(store, 6) == ["r1", "r3", "r4", "r5"]  # r0, r2: oldest delivered
    counts = store.counts()
    assert (counts["predictions"], counts["labels"]) == (2, 1)  # their predictions and labels went too
    assert store.evict_shipped(10) == 1  # r4; r1 is in a pending outbox entry, r3/r5 unscored
    assert remaining(store, 6) == ["r1", "r3", "r5"]
    store.outbox_delete(entry)
    assert store.evict_shipped(10) == 1
    assert remaining(store, 6) == ["r3", "r5"]
    assert [r.record_id for r in store.unscored_records(10)] == ["r3", "r5"]


def test_evict_quarantine_oldest_first(store: AgentStore) -> None:
    store.quarantine([Quarantined(f"q{i}", "bad", b"x" * 10) for i in range(3)])
    assert store.evict_quarantine(2) == 2
    assert [q.record_id for q in store.recent_quarantine()] == ["q2"]
    store.quarantine([Quarantined("q3", "bad", b"y")])
    ids = [q.id for q in store.recent_quarantine()]
    assert len(set(ids)) == 2
    assert store.evict_quarantine(10) == 2
    assert store.recent_quarantine() == []


def fill(store: AgentStore, n: int) -> None:
    for start in range(0, n, 500):
        ids = range(start, min(n, start + 500))
        store.add_records([rec(i, width=32) for i in ids])
        store.add_predictions(1, scored(*ids))
    store.quarantine([Quarantined(f"q{i}", "out of range", b"z" * 2000) for i in range(200)])


def test_budget_evicts_oldest_shipped_until_under_target(store: AgentStore) -> None:
    n = 6000
    fill(store, n)
    store.add_records([rec(n + i, width=32) for i in range(3)])  # unscored: must survive
    store.outbox_add("t", b"pending", ["r0"])  # oldest record, but its prediction is undelivered
    store.compact()
    budget = store.disk_usage() // 2
    result = enforce_budget(store, budget, chunk=250)
    assert result.records > 0
    assert result.quarantined > 0
    assert not result.over_budget
    assert store.live_bytes() <= budget * 0.9
    assert store.disk_usage() <= budget  # the file itself shrank
    left = remaining(store, n + 3)
    assert left[0] == "r0"
    assert left[-3:] == [f"r{n + i}" for i in range(3)]
    survivors = [int(r[1:]) for r in left[1:-3]]
    assert survivors == list(range(n - len(survivors), n))  # the newest shipped ones, contiguous
    assert store.counts()["records"] == len(left)
    assert store.outbox_count() == 1


def test_budget_noop_when_under_and_stuck_when_nothing_evictable(store: AgentStore) -> None:
    store.add_records([rec(i, width=32) for i in range(300)])  # never scored: nothing shipped
    assert enforce_budget(store, store.disk_usage() * 10).evicted == 0
    result = enforce_budget(store, 1)
    assert result.evicted == 0
    assert result.over_budget
    assert store.counts()["records"] == 300


# -- schema versions --------------------------------------------------------------------------

# An outbox as agents before schema version 2 wrote it: one outbox_refs row per record.
V1_OUTBOX = """
CREATE TABLE records (record_id TEXT PRIMARY KEY, ts REAL NOT NULL, "values" BLOB NOT NULL, received_at REAL NOT NULL);
CREATE TABLE predictions (id INTEGER PRIMARY KEY, record_id TEXT NOT NULL, model_version INTEGER NOT NULL,
    score REAL NOT NULL, alert INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE outbox_refs (outbox_id INTEGER NOT NULL, record_id TEXT NOT NULL);
INSERT INTO outbox(topic, payload, created_at)
    VALUES ('t', CAST('pending r1 r2' AS BLOB), 1.0), ('t', CAST('no refs' AS BLOB), 2.0);
INSERT INTO outbox_refs VALUES (1, 'r1'), (1, 'r2');
"""


def migrated_tables(path: Path) -> set[str]:
    """The tables of a file the store has opened, after checking it carries the current version."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_version_1_file_is_migrated_with_its_pending_outbox(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_OUTBOX)
    conn.close()
    store = SqliteAgentStore(path)
    try:
        assert [(e.id, e.payload) for e in store.outbox_pending()] == [(1, b"pending r1 r2"), (2, b"no refs")]
        store.add_records([rec(i) for i in range(4)])
        store.add_predictions(1, scored(0, 1, 2, 3))
        assert store.evict_shipped(10) == 2  # r0, r3: r1 and r2 are still in the pending entry
        assert remaining(store, 4) == ["r1", "r2"]
        assert store.outbox_delete(1)
        assert store.evict_shipped(10) == 2
        new, _ = store.outbox_add("t", b"next", ["r9"])
        assert new == 3  # ids are never reused across the migration
    finally:
        store.close()
    tables = migrated_tables(path)
    assert "outbox_refs" not in tables
    assert {"labels", "quarantine", "training"} <= tables
    SqliteAgentStore(path).close()  # opening a current file again changes nothing


# Predictions as agents before schema version 3 stored them: a table beside the records.
V2_PREDICTIONS = """
CREATE TABLE records (record_id TEXT PRIMARY KEY, ts REAL NOT NULL, "values" BLOB NOT NULL, received_at REAL NOT NULL);
CREATE TABLE predictions (id INTEGER PRIMARY KEY, record_id TEXT NOT NULL, model_version INTEGER NOT NULL,
    score REAL NOT NULL, alert INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX predictions_record ON predictions(record_id);
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    created_at REAL NOT NULL, refs TEXT NOT NULL DEFAULT '[]');
INSERT INTO outbox(topic, payload, created_at, refs) VALUES ('t', CAST('pending r2' AS BLOB), 1.0, '["r2"]');
PRAGMA user_version = 2;
"""


def test_version_2_file_is_migrated_with_predictions_in_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(V2_PREDICTIONS)
    conn.executemany(
        'INSERT INTO records(record_id, ts, "values", received_at) VALUES (?, ?, ?, 1.0)',
        [(r.record_id, r.ts, np.asarray(r.values, dtype="<f8").tobytes()) for r in (rec(0), rec(1), rec(2))],
    )
    conn.executemany(  # r0 scored twice (the later one counts), r2 once, r1 never, r9 not stored
        "INSERT INTO predictions(record_id, model_version, score, alert, at) VALUES (?, ?, ?, ?, 1.0)",
        [("r0", 1, 0.1, 0), ("r0", 2, 0.9, 1), ("r2", 2, 0.3, 0), ("r9", 2, 0.5, 0)],
    )
    conn.commit()
    conn.close()
    store = SqliteAgentStore(path)
    try:
        assert store.unscored_records(10) == [rec(1)]
        assert store.counts()["predictions"] == 2
        assert store.evict_shipped(10) == 1  # r0: r2 is in the pending entry, r1 is not scored
        assert remaining(store, 3) == ["r1", "r2"]
    finally:
        store.close()
    assert "predictions" not in migrated_tables(path)
    with closing(sqlite3.connect(path)) as conn:  # r2's prediction moved into its row; r1 has none
        rows = conn.execute("SELECT record_id, model_version, score, alert FROM records ORDER BY rowid").fetchall()
    assert rows == [("r1", None, None, None), ("r2", 2, 0.3, 0)]
    store = SqliteAgentStore(path)
    try:
        assert store.add_batch(CleanBatch.from_records([rec(1)], 8)).record_ids == []
        assert store.unscored_records(10) == [rec(1)]  # the file is usable as it now is
    finally:
        store.close()


def test_scores_stored_with_the_batch(store: AgentStore) -> None:
    store.add_records([rec(1)])
    batch = CleanBatch.from_records([rec(0), rec(1), rec(2)], 8)
    new = store.add_batch(batch, BatchScores(3, [0.1, 0.2, 0.9], [False, False, True]))
    assert new.record_ids == ["r0", "r2"]
    assert [r.record_id for r in store.unscored_records(10)] == ["r1"]  # stored before, unscored, kept as it was
    assert store.counts()["predictions"] == 2
    store.add_predictions(4, scored(1, 7))  # the backlog; r7 is not stored
    assert store.unscored_records(10) == []
    assert store.counts()["predictions"] == 3


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SqliteAgentStore(tmp_path / "a.db").close()
    conn = sqlite3.connect(tmp_path / "a.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteAgentStore(tmp_path / "a.db")


# -- one transaction for a chunk, its outbox entry and its predictions ----------------------


def test_atomic_writes_commit_together(store: AgentStore) -> None:
    with store.atomic():
        store.add_records([rec(0), rec(1)])
        entry, _ = store.outbox_add("t", b"batch", ["r0", "r1"])
        store.add_predictions(1, scored(0, 1))
    assert remaining(store, 2) == ["r0", "r1"]
    assert [e.id for e in store.outbox_pending()] == [entry]
    assert store.counts()["predictions"] == 2


def test_atomic_rolls_back_everything_on_error(tmp_path: Path) -> None:
    store = SqliteAgentStore(tmp_path / "a.db")
    try:

        def crash_before_commit() -> None:
            with store.atomic():
                store.add_records([rec(0)])
                store.outbox_add("t", b"batch", ["r0"])
                raise RuntimeError("crash before the commit")

        with pytest.raises(RuntimeError):
            crash_before_commit()
        assert remaining(store, 1) == []
        assert store.outbox_count() == 0
        # A write that fails inside the block, and is handled there, undoes only itself.
        with store.atomic():
            store.add_records([rec(1)])
            with pytest.raises(sqlite3.IntegrityError):
                store.quarantine([Quarantined(None, "no raw", None)])  # type: ignore[arg-type]
            store.outbox_add("t", b"batch", ["r1"])
        assert remaining(store, 2) == ["r1"]
        assert store.outbox_count() == 1
        assert store.counts()["quarantined"] == 0
    finally:
        store.close()


def test_the_outbox_cap_is_checked_on_an_index_not_the_table(tmp_path: Path) -> None:
    """Every add counts the outbox rows (its max_rows cap); the rows are whole prediction
    messages, so a count over the table would cost O(rows) per add during an outage."""
    store = SqliteAgentStore(tmp_path / "agent.db")
    store.close()
    conn = sqlite3.connect(tmp_path / "agent.db")
    try:
        plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN SELECT count(*) FROM outbox"))
    finally:
        conn.close()
    assert "COVERING INDEX outbox_created" in plan
