"""Batched cleaning: a micro-batch of ingest payloads at once, values checked as one array.

The agent receives many small messages; checking each value of each record in Python cost
more than decoding the JSON. Here a record that has the right shape (keys, id, version, a
finite ``ts``, exactly the spec's features) contributes one tuple of feature values, and the
tuples of the whole batch become one ``(n, width)`` float64 array whose bounds are checked
by numpy. What the fast path cannot settle cheaply — a record of the wrong shape, a value
that is not a number or null, a value out of range — goes to ``cleaning.clean_record``,
the per-record reference, which also writes every quarantine reason. So the decisions are
``clean_payload``'s by construction: a value the array check refuses is one the reference
refuses too (NaN, from null, fails every comparison; floats and ints convert exactly as
``float()`` does), and the reason comes from the reference. Tests prove the equivalence,
including on random adversarial batches.

A binary frame (``frame.py``) brings its records as arrays already: its values are checked
with the same bounds, its timestamps and ids alongside, without a Python object per value;
a record any check refuses goes to the reference like any other, as the JSON record object it
stands for.

Duplicates follow the agent's rule: a valid record whose id was accepted earlier in the
batch, or that ``known`` reports as stored, is quarantined. The agent passes no ``known``:
its store's insert tells it which records it held already (``BatchResult.stored_duplicates``),
which saved the lookup of every id before the insert looked each one up again (~0.6 µs a
record, figure 3).
"""

from __future__ import annotations

import functools
import struct
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, starmap
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.cleaning import (
    MAX_RECORD_ID_CHARS,
    CleanRecord,
    Packed,
    Quarantined,
    RecordError,
    checker_for,
    clean_record,
    payload_items,
    record_bytes,
    record_id_of,
    record_raw,
    valid_record_id,
)
from edge_agent.pipeline.frame import Frame, is_frame
from edge_agent.pipeline.typed import TypedRecords, typed_decoder
from shared.features import FeatureSpec
from shared.schemas import SCHEMA_VERSION, ingest_record_object

KnownIds = Callable[[Sequence[str]], Collection[str]]
"""Given record ids, those already stored (duplicates of earlier batches)."""

# Value types the array conversion maps exactly as the reference does (None -> NaN, which
# the bounds check refuses, and the reference names).
_ARRAY_TYPES = frozenset({float, int, type(None)})
# Integer timestamps below this convert to float without overflow (larger: the reference).
_INT_TS_LIMIT = 2**1023


@dataclass(frozen=True, slots=True)
class CleanBatch:
    """Accepted records column-wise: what the store writes and the scorer reads, without a
    Python object per record."""

    record_ids: list[str]
    ts: npt.NDArray[np.float64]  # (n,)
    values: npt.NDArray[np.float64]  # (n, width), spec order, raw (not normalized)

    def __len__(self) -> int:
        return len(self.record_ids)

    @property
    def width(self) -> int:
        return int(self.values.shape[1])

    @classmethod
    def empty(cls, width: int) -> CleanBatch:
        return cls([], np.empty((0,), dtype=np.float64), np.empty((0, width), dtype=np.float64))

    @classmethod
    def from_records(cls, records: Sequence[CleanRecord], width: int) -> CleanBatch:
        """Records of one width (``ValueError`` otherwise) as a batch."""
        if not records:
            return cls.empty(width)
        values = np.array([r.values for r in records], dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != width:
            raise ValueError(f"records do not all have width {width}")
        return cls([r.record_id for r in records], np.array([r.ts for r in records], dtype=np.float64), values)

    def records(self) -> list[CleanRecord]:
        return [
            CleanRecord(rid, ts, tuple(row))
            for rid, ts, row in zip(self.record_ids, self.ts.tolist(), self.values.tolist(), strict=True)
        ]

    def take(self, rows: Sequence[int] | npt.NDArray[np.intp]) -> CleanBatch:
        index = np.asarray(rows, dtype=np.intp)
        ids = self.record_ids
        return CleanBatch([ids[i] for i in index.tolist()], self.ts[index], self.values[index])

    def quarantined(self, names: Sequence[str], reason: str) -> list[Quarantined]:
        """Every record as a quarantine entry with ``reason``, kept as the JSON record object
        it stands for (``names``: the features in column order)."""
        return [Quarantined(rid, reason, self.record_json(i, names)) for i, rid in enumerate(self.record_ids)]

    def record_json(self, i: int, names: Sequence[str]) -> bytes:
        """Record ``i`` as the JSON record object it stands for."""
        features = dict(zip(names, self.values[i].tolist(), strict=True))
        return record_bytes(ingest_record_object(self.record_ids[i], float(self.ts[i]), features))

    def chunks(self, size: int) -> Iterator[CleanBatch]:
        for start in range(0, len(self), size):
            stop = start + size
            yield CleanBatch(self.record_ids[start:stop], self.ts[start:stop], self.values[start:stop])


def duplicate_reason(record_id: str) -> str:
    return f"duplicate record_id {record_id!r}"


@dataclass(slots=True)
class BatchResult:
    accepted: CleanBatch
    quarantined: list[Quarantined] = field(default_factory=list)
    # Record ``i`` of ``accepted`` as it arrived (a binary frame's: the JSON object it stands
    # for); None: rebuilt from its values.
    raw: Callable[[int], bytes] | None = None

    def stored_duplicates(self, indexes: Sequence[int], names: Sequence[str]) -> list[Quarantined]:
        """Quarantine entries for the accepted records at ``indexes`` that the store turned out
        to hold already, kept as they arrived (``names``: the features in column order)."""
        ids, raw = self.accepted.record_ids, self.raw
        return [
            Quarantined(ids[i], duplicate_reason(ids[i]), raw(i) if raw else self.accepted.record_json(i, names))
            for i in indexes
        ]


class _Block(NamedTuple):
    """Candidates column-wise: arrival positions (increasing), ids, timestamps, values."""

    positions: npt.NDArray[np.int64]
    ids: list[str]
    ts: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]


class _Origins:
    """Where each record position came from, looked up only for the few records that need it
    (a reason, a raw copy), so the fast path keeps no per-record reference to its source."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.starts: list[int] = []
        # (items, payload, single); items None: decoded the typed way, read again on demand
        self.sources: list[tuple[list[Any] | Packed | Frame | None, bytes, bool]] = []

    def add(self, start: int, items: list[Any] | Packed | Frame | None, payload: bytes, single: bool) -> None:
        self.starts.append(start)
        self.sources.append((items, payload, single))

    def _items(self, k: int) -> list[Any] | Packed | Frame:
        items, payload, single = self.sources[k]
        if items is None:
            # The typed decoder took this payload whole; the general decoder reads the same
            # records (as dicts or rows) for the reference.
            parsed = payload_items(payload, self.names)
            if isinstance(parsed, Packed):
                items = parsed
            elif isinstance(parsed, tuple):
                items = parsed[0]
            else:  # cannot happen: both decoders accept the same JSON (tests/.../test_typed.py)
                raise RuntimeError("a payload the typed decoder read is unreadable to the general one")
            self.sources[k] = (items, payload, single)
        return items

    def obj(self, pos: int) -> Any:
        """The record object at ``pos`` (a packed row or a frame's record as the record it stands for)."""
        k = bisect_right(self.starts, pos) - 1
        items = self._items(k)
        i = pos - self.starts[k]
        return items.record(i) if isinstance(items, (Packed, Frame)) else items[i]

    def raw(self, pos: int) -> bytes:
        k = bisect_right(self.starts, pos) - 1
        _, payload, single = self.sources[k]
        return record_raw(self.obj(pos), payload, single)


def clean_payloads(
    payloads: Sequence[bytes], spec: FeatureSpec, known: KnownIds | Collection[str] = frozenset()
) -> BatchResult:
    """Clean payloads in arrival order, as ``clean_payload`` would one after the other with the
    ids accepted so far counted as seen; quarantined entries come in arrival order too."""
    checker = checker_for(spec)
    getter, width = checker.getter, len(checker.names)
    low = np.array([b[1] for b in checker.bounds], dtype=np.float64)
    high = np.array([b[2] for b in checker.bounds], dtype=np.float64)
    origins = _Origins(checker.names)
    typed = typed_decoder(checker.names)
    frames: list[tuple[int, Frame]] = []  # binary frames and the position of their first record
    # Candidates: records of the right shape, values not yet checked, in arrival order.
    cand_pos: list[int] = []
    cand_ids: list[str] = []
    cand_ts: list[float] = []
    rows: list[Sequence[Any]] = []
    slow: list[int] = []  # positions the reference must judge
    typed_only = True  # every row's values are floats (the typed decoder's)
    quarantined: list[tuple[int, Quarantined]] = []
    pos = 0
    for payload in payloads:
        # Plain, valid JSON payloads (nearly all) decode straight into ids, ts and rows;
        # whatever the typed decoder refuses is read the general way below.
        fast = None if is_frame(payload) else typed.decode(payload)
        if fast is not None:
            origins.add(pos, None, payload, isinstance(fast, TypedRecords) and fast.single)
            if isinstance(fast, TypedRecords):
                cand_ids += fast.record_ids
                cand_ts += fast.ts
                rows += fast.rows
                n = len(fast.record_ids)
            else:
                reorder = _reorder(fast.fields, checker.names)
                packed_rows = fast.rows
                cand_ids += [row[0] for row in packed_rows]
                cand_ts += [row[1] for row in packed_rows]
                rows += [reorder(row) for row in packed_rows]
                n = len(packed_rows)
            cand_pos.extend(range(pos, pos + n))
            pos += n
            continue
        parsed = payload_items(payload, checker.names)
        if isinstance(parsed, Quarantined):
            quarantined.append((pos, parsed))
            pos += 1
            continue
        if isinstance(parsed, Frame):
            origins.add(pos, parsed, payload, False)
            frames.append((pos, parsed))
            pos += len(parsed)
            continue
        if isinstance(parsed, Packed):
            origins.add(pos, parsed, payload, False)
            taker = _row_values(parsed.fields, checker.names)
            size = width + 2
            for row in parsed.rows:
                if taker is not None and type(row) is list and len(row) == size:
                    rid = row[0]
                    ts = _finite_ts(row[1])
                    if ts is not None and valid_record_id(rid):
                        cand_pos.append(pos)
                        cand_ids.append(rid)
                        cand_ts.append(ts)
                        rows.append(taker(row))
                        typed_only = False
                        pos += 1
                        continue
                slow.append(pos)
                pos += 1
            continue
        items, single = parsed
        origins.add(pos, items, payload, single)
        for obj in items:
            if type(obj) is dict and len(obj) == 4:
                try:  # four keys, all four present: exactly RECORD_KEYS
                    rid = obj["record_id"]
                    ts = obj["ts"]
                    version = obj["schema_version"]
                    features = obj["features"]
                except KeyError:
                    pass
                else:
                    if (
                        valid_record_id(rid)
                        and type(version) is int
                        and version == SCHEMA_VERSION
                        and type(features) is dict
                        and len(features) == width
                    ):
                        ts = _finite_ts(ts)
                        if ts is not None:
                            try:
                                row = getter(features)
                            except KeyError:  # right count, wrong names: the reference says which
                                pass
                            else:
                                cand_pos.append(pos)
                                cand_ids.append(rid)
                                cand_ts.append(ts)
                                rows.append(row)
                                typed_only = False
                                pos += 1
                                continue
            slow.append(pos)
            pos += 1

    values, refused = _checked_values(rows, low, high, width, typed_only)
    positions = np.array(cand_pos, dtype=np.int64)
    ids = cand_ids
    ts_arr = np.array(cand_ts, dtype=np.float64)
    if refused:
        slow += positions[refused].tolist()
        keep = np.ones(len(ids), dtype=bool)
        keep[refused] = False
        ids = [rid for rid, k in zip(ids, keep.tolist(), strict=True) if k]
        positions, ts_arr, values = positions[keep], ts_arr[keep], values[keep]
    if frames:
        block, refused_positions = _frame_candidates(frames, low, high)
        slow += refused_positions
        positions, ids, ts_arr, values = _merge(_Block(positions, ids, ts_arr, values), block)

    # The reference settles the rest: a reason, or (a shape the fast path does not take, e.g.
    # an integer ts beyond 2**1023) an accepted record that joins the candidates in its place.
    extra: list[tuple[int, CleanRecord]] = []
    for p in slow:
        obj = origins.obj(p)
        try:
            extra.append((p, clean_record(obj, checker)))
        except RecordError as exc:
            quarantined.append((p, Quarantined(record_id_of(obj), str(exc), origins.raw(p))))
    if extra:
        order = np.argsort(np.concatenate([positions, np.array([p for p, _ in extra], dtype=np.int64)]), kind="stable")
        merged = ids + [r.record_id for _, r in extra]
        ids = [merged[i] for i in order.tolist()]
        ts_arr = np.concatenate([ts_arr, np.array([r.ts for _, r in extra], dtype=np.float64)])[order]
        extra_values = np.array([r.values for _, r in extra], dtype=np.float64).reshape(len(extra), width)
        values = np.concatenate([values, extra_values])[order]
        positions = np.concatenate([positions, np.array([p for p, _ in extra], dtype=np.int64)])[order]

    duplicates = _duplicates(ids, known)
    if duplicates:
        for i in duplicates:
            p = int(positions[i])
            quarantined.append((p, Quarantined(ids[i], duplicate_reason(ids[i]), origins.raw(p))))
        mask = np.ones(len(ids), dtype=bool)
        mask[duplicates] = False
        ids = [rid for rid, k in zip(ids, mask.tolist(), strict=True) if k]
        positions, ts_arr, values = positions[mask], ts_arr[mask], values[mask]

    quarantined.sort(key=lambda entry: entry[0])
    return BatchResult(
        CleanBatch(ids, ts_arr, values), [q for _, q in quarantined], lambda i: origins.raw(int(positions[i]))
    )


def _finite_ts(ts: Any) -> float | None:
    """``ts`` as the float the reference makes of it, when that is plain; else None."""
    if type(ts) is int and -_INT_TS_LIMIT < ts < _INT_TS_LIMIT:
        ts = float(ts)
    # finite: inf - inf and nan - nan are nan
    if type(ts) is float and ts - ts == 0.0:
        return ts
    return None


def _row_values(fields: tuple[str, ...], names: tuple[str, ...]) -> Callable[[Sequence[Any]], Sequence[Any]] | None:
    """Takes a packed row's values in spec order; None when the fields are not the spec's
    (every row then goes to the reference, which names the unknown or missing ones)."""
    if len(fields) != len(names) or set(fields) != set(names):
        return None
    return _reorder(fields, names)


def _reorder(fields: tuple[str, ...], names: tuple[str, ...]) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """Takes a packed row's values in spec order, ``fields`` being the spec's ``names`` in any order."""
    if fields == names:
        return lambda row: row[2:]
    index = [fields.index(name) + 2 for name in names]
    return lambda row: [row[i] for i in index]


def _frame_candidates(
    frames: list[tuple[int, Frame]], low: npt.NDArray[np.float64], high: npt.NDArray[np.float64]
) -> tuple[_Block, list[int]]:
    """The records of the batch's frames that need no reference, and the positions of those
    that do: an id the fast path does not take, a ts that is not finite, a value out of
    bounds or NaN (null) -- the checks the JSON candidates pass, on the frames' arrays at once
    (per frame, numpy's call overhead cost more than the check of its ten records)."""
    ids: list[Any] = list(chain.from_iterable(frame.record_ids for _, frame in frames))
    positions = np.concatenate([np.arange(start, start + len(frame), dtype=np.int64) for start, frame in frames])
    ts = np.concatenate([frame.ts for _, frame in frames])
    values = np.concatenate([frame.values for _, frame in frames])
    if set(map(type, ids)) == {str} and all(map(str.isascii, ids)):
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        ok = (lengths > 0) & (lengths <= MAX_RECORD_ID_CHARS)
    else:
        ok = np.fromiter(map(valid_record_id, ids), dtype=bool, count=len(ids))
    ok &= np.isfinite(ts)
    ok &= ((values >= low) & (values <= high)).all(axis=1)
    if ok.all():
        return _Block(positions, ids, ts, values), []
    good = np.flatnonzero(ok)
    block = _Block(positions[good], [ids[i] for i in good.tolist()], ts[good], values[good])
    return block, positions[~ok].tolist()


def _merge(json_block: _Block, frame_block: _Block) -> _Block:
    """The JSON candidates and the frames' as one block in arrival order."""
    if not json_block.ids:
        return frame_block
    order = np.argsort(np.concatenate([json_block.positions, frame_block.positions]), kind="stable")
    ids = json_block.ids + frame_block.ids
    return _Block(
        np.concatenate([json_block.positions, frame_block.positions])[order],
        [ids[i] for i in order.tolist()],
        np.concatenate([json_block.ts, frame_block.ts])[order],
        np.concatenate([json_block.values, frame_block.values])[order],
    )


def _checked_values(
    rows: list[Sequence[Any]],
    low: npt.NDArray[np.float64],
    high: npt.NDArray[np.float64],
    width: int,
    floats_only: bool,
) -> tuple[npt.NDArray[np.float64], list[int]]:
    """The rows as one array, and the indexes of rows the reference must judge;
    ``floats_only``: every value is known to be a float (no type to check)."""
    if not rows:
        return np.empty((0, width), dtype=np.float64), []
    values: npt.NDArray[np.float64] | None
    if floats_only:
        # Each row packed by one C call into the buffer numpy then reads: 0.3 µs a record,
        # where np.fromiter over the values (0.6) converted each one through numpy's
        # scalar machinery, and numpy's inference (1.3) also looked at each one's type.
        pack = _row_packer(width)
        values = np.frombuffer(b"".join(starmap(pack, rows)), dtype="<f8").reshape(len(rows), width)
    else:
        values = _numbers_only(rows, width)
        if values is None:
            values = _blanked_values(rows, width)
    # NaN (null, or a row blanked above) fails both comparisons.
    ok = ((values >= low) & (values <= high)).all(axis=1)
    return values, np.flatnonzero(~ok).tolist()


@functools.lru_cache(maxsize=16)
def _row_packer(width: int) -> Callable[..., bytes]:
    """Packs ``width`` floats as little-endian float64: each value's bits as they are."""
    return struct.Struct(f"<{width}d").pack


def _duplicates(ids: list[str], known: KnownIds | Collection[str]) -> list[int]:
    """Indexes of ids accepted earlier in ``ids`` or already known, in order."""
    stored = known(ids) if callable(known) else [rid for rid in ids if rid in known]
    if not stored and len(set(ids)) == len(ids):
        return []
    stored_set = set(stored)
    seen: set[str] = set()
    out: list[int] = []
    for i, rid in enumerate(ids):
        if rid in seen or rid in stored_set:
            out.append(i)
        else:
            seen.add(rid)
    return out


def _numbers_only(rows: list[Sequence[Any]], width: int) -> npt.NDArray[np.float64] | None:
    """The rows as floats when numpy infers a numeric array from them (every value an int, a
    float or a boolean: a None, a string, a list or a dict makes it an object, text or ragged
    array), a row holding a boolean blanked (NaN); None otherwise. One pass in C instead of a
    type check of every value in Python."""
    try:
        guess = np.array(rows)
    except (ValueError, OverflowError):
        return None
    if guess.dtype.kind not in "fiu" or guess.shape != (len(rows), width):
        return None
    # int64/uint64 to float64 rounds to nearest, as float() does
    values = guess.astype(np.float64, copy=False)
    # A JSON true/false is the one value numpy silently takes for a number (1 or 0), so only a
    # row holding a 0 or a 1 can hide one: those rows' types are checked, and a row with a
    # boolean is blanked (NaN) for the reference. Scanning every payload's bytes for "true"
    # and "false" instead cost about 1 µs a record, a third of orjson's decoding.
    suspects = ((values == 0.0) | (values == 1.0)).any(axis=1)
    if suspects.any():
        for i in np.flatnonzero(suspects).tolist():
            if bool in map(type, rows[i]):
                values[i] = np.nan
    return values


def _blanked_values(rows: list[Sequence[Any]], width: int) -> npt.NDArray[np.float64]:
    """The rows as one array, a row holding anything but int, float or None blanked (NaN)."""
    if not _ARRAY_TYPES.issuperset(map(type, chain.from_iterable(rows))):
        # A string, a boolean, an array... somewhere: those rows are blanked (NaN) so that the
        # conversion below cannot misread them (numpy parses "1.5" and takes True as 1.0);
        # the bounds check then sends them to the reference.
        for i, row in enumerate(rows):
            if not _ARRAY_TYPES.issuperset(map(type, row)):
                rows[i] = (None,) * width
    try:
        return np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float range: find its rows
        for i, row in enumerate(rows):
            try:
                np.array(row, dtype=np.float64)
            except OverflowError:
                rows[i] = (None,) * width
        return np.array(rows, dtype=np.float64)
