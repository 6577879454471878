"""SQLite store (the only sqlite3 user): WAL journal, synchronous=NORMAL, survives kill -9.

WAL lets the Flower ClientApp read from another process while the agent writes. A new
database is created with ``auto_vacuum=INCREMENTAL`` so that eviction (disk budget) can
shrink the file; an older file without it still stops growing, because freed pages are
reused, and eviction is driven by live pages, not by the file size. A store
opened with ``readonly=True`` never creates or alters the schema and reads through a
``mode=ro`` connection; its one permitted write, ``record_training``, goes through a
short-lived read-write connection so the ClientApp can report what it trained on.

The schema carries a version (``PRAGMA user_version``, ``SCHEMA_VERSION``): opening an older
file read-write upgrades it in place, one ``MIGRATIONS`` step at a time inside one
transaction, so an agent update keeps the records and the undelivered outbox it finds.

A record's prediction lives in its row (``model_version`` NULL: not scored yet): the agent
scores a chunk before storing it and writes each record once, where a predictions table cost
a second row and index entry per record (about 2 µs of the ~20 an ingested record costs).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

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
    StoreUnavailableError,
    empty_dataset,
)

BUSY_TIMEOUT_MS = 10_000
# Primary SQLite result codes that say "not now" rather than "wrong": busy, locked, out of
# memory, read-only, I/O error, disk full, cannot open, lock protocol.
UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})
# Bound parameters per IN (...) query; SQLite builds before 3.32 allow 999.
MAX_IN_PARAMS = 900
# Records per INSERT statement in add_batch (8 parameters each: within 999). One statement
# binds its rows in one call and writes them in one sqlite3_step, where executemany stepped,
# reset and bound each row on its own: about 0.7 of the ~3.5 µs a stored record cost.
ROWS_PER_INSERT = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    "values" BLOB NOT NULL,
    received_at REAL NOT NULL,
    model_version INTEGER,
    score REAL,
    alert INTEGER,
    scored_at REAL
);
CREATE TABLE IF NOT EXISTS labels (
    record_id TEXT PRIMARY KEY,
    label INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    record_id TEXT,
    reason TEXT NOT NULL,
    raw BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_history (
    id INTEGER PRIMARY KEY,
    version INTEGER,
    event TEXT NOT NULL CHECK (event IN ('installed', 'rejected', 'rolled_back')),
    reason TEXT NOT NULL,
    sha256 TEXT,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    refs TEXT NOT NULL DEFAULT '[]'
);
-- The outbox's row count is checked on every add (its max_rows cap): without an index,
-- count(*) walks the table, whose rows are whole prediction messages, so an outbox that grew
-- during a broker outage made every add cost O(rows) (500 pending rows: ~0.5 ms an add).
-- An index needs no version step: this script runs on every read-write open.
CREATE INDEX IF NOT EXISTS outbox_created ON outbox(created_at);
CREATE TABLE IF NOT EXISTS training (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    examples INTEGER NOT NULL,
    loss REAL,
    at REAL NOT NULL
);
"""


# PRAGMA user_version of the schema above. A file of an older version is brought up to date
# on open (read-write) by the steps in MIGRATIONS, each in one transaction.
SCHEMA_VERSION = 3
MIGRATIONS: dict[int, str] = {
    # 1 -> 2: the record ids an outbox entry protects move from one outbox_refs row per record
    # (two index updates per record on write and on ack) into a JSON array on the entry itself.
    1: """
ALTER TABLE outbox ADD COLUMN refs TEXT NOT NULL DEFAULT '[]';
UPDATE outbox SET refs = coalesce(
    (SELECT json_group_array(record_id) FROM outbox_refs WHERE outbox_id = outbox.id), '[]');
DROP TABLE outbox_refs;
""",
    # 2 -> 3: a record's prediction (the latest, when re-scored) moves from the predictions
    # table into the record's row.
    2: """
ALTER TABLE records ADD COLUMN model_version INTEGER;
ALTER TABLE records ADD COLUMN score REAL;
ALTER TABLE records ADD COLUMN alert INTEGER;
ALTER TABLE records ADD COLUMN scored_at REAL;
UPDATE records SET (model_version, score, alert, scored_at) = (
    SELECT p.model_version, p.score, p.alert, p.at FROM predictions p
    WHERE p.record_id = records.record_id ORDER BY p.id DESC LIMIT 1)
WHERE EXISTS (SELECT 1 FROM predictions p WHERE p.record_id = records.record_id);
DROP TABLE predictions;
""",
}


def _pack(values: tuple[float, ...]) -> bytes:
    # float64 little-endian: exact round trip of the validated values, 8 bytes each.
    return np.asarray(values, dtype="<f8").tobytes()


def _unpack(blob: bytes) -> tuple[float, ...]:
    return tuple(np.frombuffer(blob, dtype="<f8").tolist())


class SqliteAgentStore:
    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0  # writes open on this connection: > 0 inside a transaction
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"agent store {self.path} does not exist")
            self._conn = self._connect(f"file:{self.path}?mode=ro")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect(str(self.path))
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new, empty file only
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._migrate()

    def _migrate(self) -> None:
        """Create the schema in a new file, or upgrade an older one step by step."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                (version,) = self._conn.execute("PRAGMA user_version").fetchone()
                has_records = self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
                ).fetchone()
                if has_records is None:
                    version = SCHEMA_VERSION  # a new file: the current schema, nothing to migrate
                elif version == 0:
                    version = 1  # files written before the schema carried a version
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"agent store {self.path} has schema version {version}, newer than {SCHEMA_VERSION}"
                    )
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(
            target,
            uri=target.startswith("file:"),
            isolation_level=None,  # explicit transactions below
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError("this store was opened read-only")
        with self._lock:
            if self._depth:
                # Inside atomic(): a savepoint, so a write that fails (and is caught by its
                # caller) leaves nothing half done in the enclosing transaction.
                self._depth += 1
                self._conn.execute("SAVEPOINT nested")
                try:
                    yield self._conn
                except BaseException as exc:
                    if self._conn.in_transaction:  # some errors (disk full) end the whole transaction
                        self._conn.execute("ROLLBACK TO nested")
                        self._conn.execute("RELEASE nested")
                    _raise_unavailable(exc)
                    raise
                finally:
                    self._depth -= 1
                self._conn.execute("RELEASE nested")
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                _raise_unavailable(exc)
                raise
            self._depth = 1
            try:
                yield self._conn
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                _raise_unavailable(exc)
                raise
            finally:
                self._depth = 0
            if not self._conn.in_transaction:
                raise StoreError("the transaction was rolled back by an error inside it")
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    with suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                _raise_unavailable(exc)
                raise

    @contextmanager
    def atomic(self) -> Iterator[None]:
        with self._write():
            yield

    # -- records ------------------------------------------------------------------------

    def add_records(self, batch: Sequence[CleanRecord]) -> list[CleanRecord]:
        new: list[CleanRecord] = []
        now = time.time()
        with self._write() as conn:
            for r in batch:
                cur = conn.execute(
                    'INSERT OR IGNORE INTO records(record_id, ts, "values", received_at) VALUES (?, ?, ?, ?)',
                    (r.record_id, r.ts, _pack(r.values), now),
                )
                if cur.rowcount == 1:
                    new.append(r)
        return new

    def add_batch(self, batch: CleanBatch, scores: BatchScores | None = None) -> CleanBatch:
        """Multi-row inserts in one transaction; rows already stored are told apart afterwards
        (rare: cleaning drops duplicates first) by the rowids the insert handed out."""
        n = len(batch)
        if n == 0:
            return batch
        now = time.time()
        values = np.ascontiguousarray(batch.values, dtype="<f8")
        size = values.shape[1] * 8
        # bytearray, not bytes: sqlite3 binds a str, int, float or bytearray as it is, but
        # looks a bytes value up in its adapter registry first (a tuple, a dict lookup and two
        # failed attribute lookups), which cost more than a µs per record.
        flat = bytearray(values.data)
        columns: list[Sequence[object]] = [
            batch.record_ids,
            batch.ts.tolist(),
            [flat[i : i + size] for i in range(0, n * size, size)],
            [now] * n,
        ]
        if scores is not None:
            columns += [[scores.model_version] * n, scores.scores, [int(a) for a in scores.alerts], [now] * n]
        width = len(columns)
        with self._write() as conn:
            (last,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM records").fetchone()
            before = conn.total_changes
            for start in range(0, n, ROWS_PER_INSERT):
                stop = min(start + ROWS_PER_INSERT, n)
                params: list[object] = [None] * ((stop - start) * width)
                for k, column in enumerate(columns):
                    params[k::width] = column[start:stop]
                conn.execute(_insert_records_sql(stop - start, scores is not None), params)
            if conn.total_changes - before == n:
                return batch
            fresh = {rid for (rid,) in conn.execute("SELECT record_id FROM records WHERE rowid > ?", (last,))}
        keep: list[int] = []
        for i, rid in enumerate(batch.record_ids):
            if rid in fresh:
                fresh.discard(rid)  # a second copy in the same batch was ignored
                keep.append(i)
        return batch.take(keep)

    def has_record(self, record_id: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM records WHERE record_id = ?", (record_id,)).fetchone()
        return row is not None

    def unscored_records(self, limit: int) -> list[CleanRecord]:
        with self._lock:
            rows = self._conn.execute(
                'SELECT record_id, ts, "values" FROM records WHERE model_version IS NULL ORDER BY rowid LIMIT ?',
                (limit,),
            ).fetchall()
        return [CleanRecord(rid, ts, _unpack(blob)) for rid, ts, blob in rows]

    def add_predictions(self, model_version: int, predictions: Sequence[ScoredRecord]) -> None:
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "UPDATE records SET model_version = ?, score = ?, alert = ?, scored_at = ? WHERE record_id = ?",
                [(model_version, p.score, int(p.alert), now, p.record_id) for p in predictions],
            )

    # -- labels and quarantine ------------------------------------------------------------

    def add_labels(self, labels: Sequence[tuple[str, int]]) -> int:
        now = time.time()
        new = 0
        with self._write() as conn:
            for rid, label in labels:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO labels(record_id, label, at) VALUES (?, ?, ?)", (rid, int(label), now)
                )
                if cur.rowcount == 1:
                    new += 1
                else:
                    conn.execute("UPDATE labels SET label = ?, at = ? WHERE record_id = ?", (int(label), now, rid))
        return new

    def quarantine(self, items: Sequence[Quarantined]) -> None:
        if not items:
            return
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO quarantine(record_id, reason, raw, at) VALUES (?, ?, ?, ?)",
                [(q.record_id, q.reason, q.raw, now) for q in items],
            )

    def recent_quarantine(self, limit: int = 100) -> list[QuarantineEntry]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, record_id, reason, raw, at FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [QuarantineEntry(i, rid, reason, bytes(raw), at) for i, rid, reason, raw, at in rows]

    # -- models and training --------------------------------------------------------------

    def record_model_event(
        self, version: int | None, event: ModelEventKind, reason: str = "", sha256: str | None = None
    ) -> None:
        if event not in MODEL_EVENTS:
            raise StoreError(f"unknown model event {event!r}")
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO model_history(version, event, reason, sha256, at) VALUES (?, ?, ?, ?, ?)",
                (version, event, reason, sha256, time.time()),
            )
            newest = cursor.lastrowid
            if newest is not None and newest > MODEL_HISTORY_KEEP:
                conn.execute("DELETE FROM model_history WHERE id <= ?", (newest - MODEL_HISTORY_KEEP,))

    def model_history(self, limit: int = 100) -> list[ModelEvent]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT version, event, reason, sha256, at FROM model_history ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [ModelEvent(v, e, r, s, a) for v, e, r, s, a in rows]

    def labelled_dataset(self, width: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        with self._lock:
            rows = self._conn.execute(
                'SELECT r."values", l.label FROM labels l JOIN records r ON r.record_id = l.record_id '
                'WHERE length(r."values") = ? ORDER BY r.rowid',
                (8 * width,),
            ).fetchall()
        if not rows:
            return empty_dataset(width)
        x = np.frombuffer(b"".join(blob for blob, _ in rows), dtype="<f8").reshape(len(rows), width)
        return x.astype(np.float64), np.array([label for _, label in rows], dtype=np.float64)

    def record_training(self, run_id: str, round: int, examples: int, loss: float | None) -> None:
        sql = "INSERT INTO training(run_id, round, examples, loss, at) VALUES (?, ?, ?, ?, ?)"
        args = (run_id, round, examples, loss, time.time())
        if not self.readonly:
            with self._write() as conn:
                conn.execute(sql, args)
            return
        conn = self._connect(f"file:{self.path}?mode=rw")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, args)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def counts(self) -> dict[str, int]:
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*), count(model_version), (SELECT count(*) FROM quarantine), "
                "(SELECT count(*) FROM labels), (SELECT coalesce(sum(examples), 0) FROM training), "
                "(SELECT count(*) FROM model_history WHERE event = 'rejected') FROM records"
            ).fetchone()
        keys = ("records", "predictions", "quarantined", "labels", "trained_examples", "models_rejected")
        return {k: int(v) for k, v in zip(keys, row, strict=True)}

    def trained_examples(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT coalesce(sum(examples), 0) FROM training").fetchone()
        return int(row[0])

    # -- outbox -------------------------------------------------------------------------------

    def outbox_add(
        self, topic: str, payload: bytes, record_ids: Sequence[str] = (), max_rows: int | None = None
    ) -> tuple[int, int]:
        dropped = 0
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO outbox(topic, payload, created_at, refs) VALUES (?, ?, ?, ?)",
                (topic, bytes(payload), time.time(), orjson.dumps(list(record_ids)).decode()),
            )
            entry_id = int(cur.lastrowid or 0)
            if max_rows is not None:
                (count,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
                excess = int(count) - max(max_rows, 1)
                if excess > 0:
                    victims = [
                        (i,) for (i,) in conn.execute("SELECT id FROM outbox ORDER BY id LIMIT ?", (excess,)).fetchall()
                    ]
                    conn.executemany("DELETE FROM outbox WHERE id = ?", victims)
                    dropped = len(victims)
        return entry_id, dropped

    def outbox_delete(self, entry_id: int) -> bool:
        return self.outbox_delete_many([entry_id]) == 1

    def outbox_delete_many(self, entry_ids: Sequence[int]) -> int:
        deleted = 0
        with self._write() as conn:
            for start in range(0, len(entry_ids), MAX_IN_PARAMS):
                part = list(entry_ids[start : start + MAX_IN_PARAMS])
                marks = ",".join("?" * len(part))
                deleted += conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", part).rowcount
        return deleted

    def outbox_pending(self, limit: int = 1000, after_id: int = 0) -> list[OutboxEntry]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, topic, payload, created_at FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [OutboxEntry(i, topic, bytes(payload), at) for i, topic, payload, at in rows]

    def outbox_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    # -- disk budget ---------------------------------------------------------------------------

    def disk_usage(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def live_bytes(self) -> int:
        with self._lock:
            pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
            size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        return (pages - free) * size

    def evict_shipped(self, limit: int) -> int:
        with self._write() as conn:
            victims = conn.execute(
                "SELECT r.record_id FROM records r WHERE r.model_version IS NOT NULL "
                # the ids of all pending entries, gathered once per query (IN builds a temporary index)
                "AND r.record_id NOT IN (SELECT j.value FROM outbox o, json_each(o.refs) j) "
                "ORDER BY r.rowid LIMIT ?",
                (limit,),
            ).fetchall()
            for table in ("labels", "records"):
                conn.executemany(f"DELETE FROM {table} WHERE record_id = ?", victims)
        return len(victims)

    def evict_quarantine(self, limit: int) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT ?)", (limit,)
            )
        return max(cur.rowcount, 0)

    def compact(self) -> None:
        if self.readonly:
            raise StoreError("this store was opened read-only")
        with self._lock:
            # executescript steps the pragma to completion; execute() would free a single page.
            self._conn.executescript("PRAGMA incremental_vacuum;")
            # TRUNCATE resets the WAL to zero bytes unless a reader (the ClientApp) holds it.
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@functools.cache
def _insert_records_sql(rows: int, scored: bool) -> str:
    """``INSERT OR IGNORE`` of ``rows`` records (with their predictions when ``scored``)."""
    columns = 'record_id, ts, "values", received_at'
    if scored:
        columns += ", model_version, score, alert, scored_at"
    marks = "(" + ", ".join(["?"] * (columns.count(",") + 1)) + ")"
    return f"INSERT OR IGNORE INTO records({columns}) VALUES " + ", ".join([marks] * rows)


def _raise_unavailable(exc: BaseException) -> None:
    """Raise ``StoreUnavailableError`` for an SQLite error that says the store cannot write now."""
    if isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in UNAVAILABLE_CODES:
        raise StoreUnavailableError(f"the store cannot write: {exc}") from exc
