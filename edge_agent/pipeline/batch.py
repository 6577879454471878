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

Duplicates follow the agent's rule: a valid record whose id was accepted earlier in the
batch, or that ``known`` reports as stored, is quarantined; the store is asked once per
batch, not once per record.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.cleaning import (
    MAX_RECORD_ID_CHARS,
    RECORD_KEYS,
    CleanRecord,
    Quarantined,
    RecordError,
    checker_for,
    clean_record,
    payload_items,
    record_id_of,
    record_raw,
)
from shared.features import FeatureSpec
from shared.schemas import SCHEMA_VERSION

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

    def chunks(self, size: int) -> Iterator[CleanBatch]:
        for start in range(0, len(self), size):
            stop = start + size
            yield CleanBatch(self.record_ids[start:stop], self.ts[start:stop], self.values[start:stop])


@dataclass(slots=True)
class BatchResult:
    accepted: CleanBatch
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass(slots=True)
class _Candidates:
    """Records that passed the shape checks, in arrival order (``pos``), values still unchecked."""

    pos: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    objs: list[Any] = field(default_factory=list)
    raws: list[tuple[bytes, bool]] = field(default_factory=list)  # (payload, single)


def clean_payloads(
    payloads: Sequence[bytes], spec: FeatureSpec, known: KnownIds | Collection[str] = frozenset()
) -> BatchResult:
    """Clean payloads in arrival order, as ``clean_payload`` would one after the other with the
    ids accepted so far counted as seen; quarantined entries come in arrival order too."""
    checker = checker_for(spec)
    getter, width = checker.getter, len(checker.names)
    cand = _Candidates()
    slow: list[tuple[int, Any, bytes, bool]] = []  # (pos, obj, payload, single) for the reference
    quarantined: list[tuple[int, Quarantined]] = []
    pos = 0
    for payload in payloads:
        parsed = payload_items(payload)
        if isinstance(parsed, Quarantined):
            quarantined.append((pos, parsed))
            pos += 1
            continue
        items, single = parsed
        raw = (payload, single)
        for obj in items:
            if type(obj) is dict and len(obj) == 4 and obj.keys() == RECORD_KEYS:
                rid = obj["record_id"]
                ts = obj["ts"]
                version = obj["schema_version"]
                features = obj["features"]
                if (
                    type(rid) is str
                    and 0 < len(rid) <= MAX_RECORD_ID_CHARS
                    and type(version) is int
                    and version == SCHEMA_VERSION
                    and type(features) is dict
                    and len(features) == width
                ):
                    if type(ts) is int and -_INT_TS_LIMIT < ts < _INT_TS_LIMIT:
                        ts = float(ts)
                    if type(ts) is not float or ts - ts != 0.0:  # finite: inf - inf and nan - nan are nan
                        slow.append((pos, obj, payload, single))
                        pos += 1
                        continue
                    try:
                        row = getter(features)
                    except KeyError:  # right count, wrong names: the reference says which
                        pass
                    else:
                        cand.pos.append(pos)
                        cand.ids.append(rid)
                        cand.ts.append(ts)
                        cand.rows.append(row)
                        cand.objs.append(obj)
                        cand.raws.append(raw)
                        pos += 1
                        continue
            slow.append((pos, obj, payload, single))
            pos += 1

    values, refused = _checked_values(cand.rows, checker.bounds, width)
    for i in refused:
        slow.append((cand.pos[i], cand.objs[i], *cand.raws[i]))

    # The reference settles the rest: a reason, or (a shape the fast path does not take,
    # e.g. an integer ts) an accepted record that joins the candidates in its place.
    extra_pos: list[int] = []
    extra: list[CleanRecord] = []
    extra_raws: list[tuple[Any, bytes, bool]] = []
    for p, obj, payload, single in slow:
        try:
            record = clean_record(obj, checker)
        except RecordError as exc:
            quarantined.append((p, Quarantined(record_id_of(obj), str(exc), record_raw(obj, payload, single))))
            continue
        extra_pos.append(p)
        extra.append(record)
        extra_raws.append((obj, payload, single))

    keep = np.ones(len(cand.pos), dtype=bool)
    keep[refused] = False
    order_pos = [p for p, k in zip(cand.pos, keep.tolist(), strict=True) if k]
    ids = [r for r, k in zip(cand.ids, keep.tolist(), strict=True) if k] if refused else cand.ids
    ts_arr = np.array(cand.ts, dtype=np.float64)[keep] if refused else np.array(cand.ts, dtype=np.float64)
    vals = values[keep] if refused else values
    objs: list[tuple[Any, bytes, bool]] | None = None
    if extra:
        # Rare: merge the reference's acceptances back into arrival order.
        all_pos = order_pos + extra_pos
        order = np.argsort(np.array(all_pos, dtype=np.int64), kind="stable")
        ids = [(ids + [r.record_id for r in extra])[i] for i in order.tolist()]
        ts_arr = np.concatenate([ts_arr, np.array([r.ts for r in extra], dtype=np.float64)])[order]
        extra_vals = np.array([r.values for r in extra], dtype=np.float64).reshape(len(extra), width)
        vals = np.concatenate([vals, extra_vals])[order]
        kept_objs = [(o, *r) for o, r, k in zip(cand.objs, cand.raws, keep.tolist(), strict=True) if k]
        objs = [(kept_objs + extra_raws)[i] for i in order.tolist()]
        order_pos = [all_pos[i] for i in order.tolist()]

    duplicates = _duplicates(ids, known)
    if duplicates:
        if objs is None:
            objs = [(o, *r) for o, r, k in zip(cand.objs, cand.raws, keep.tolist(), strict=True) if k]
        for i in duplicates:
            obj, payload, single = objs[i]
            reason = f"duplicate record_id {ids[i]!r}"
            quarantined.append((order_pos[i], Quarantined(ids[i], reason, record_raw(obj, payload, single))))
        mask = np.ones(len(ids), dtype=bool)
        mask[duplicates] = False
        ids = [r for r, k in zip(ids, mask.tolist(), strict=True) if k]
        ts_arr, vals = ts_arr[mask], vals[mask]

    quarantined.sort(key=lambda entry: entry[0])
    return BatchResult(CleanBatch(ids, ts_arr, vals), [q for _, q in quarantined])


def _checked_values(
    rows: list[tuple[Any, ...]], bounds: tuple[tuple[str, float, float], ...], width: int
) -> tuple[npt.NDArray[np.float64], list[int]]:
    """The rows as one array, and the indexes of rows the reference must judge."""
    if not rows:
        return np.empty((0, width), dtype=np.float64), []
    if not _ARRAY_TYPES.issuperset(map(type, chain.from_iterable(rows))):
        # A string, a boolean, an array... somewhere: those rows are blanked (NaN) so that the
        # conversion below cannot misread them (numpy parses "1.5" and takes True as 1.0);
        # the bounds check then sends them to the reference.
        for i, row in enumerate(rows):
            if not _ARRAY_TYPES.issuperset(map(type, row)):
                rows[i] = (None,) * width
    try:
        values = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float range: find its rows
        for i, row in enumerate(rows):
            try:
                np.array(row, dtype=np.float64)
            except OverflowError:
                rows[i] = (None,) * width
        values = np.array(rows, dtype=np.float64)
    low = np.array([b[1] for b in bounds], dtype=np.float64)
    high = np.array([b[2] for b in bounds], dtype=np.float64)
    # NaN (null, or a row blanked above) fails both comparisons.
    ok = ((values >= low) & (values <= high)).all(axis=1)
    return values, np.flatnonzero(~ok).tolist()


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
