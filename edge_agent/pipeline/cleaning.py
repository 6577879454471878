"""Cleaning: one ingest payload to accepted records and quarantined ones, each with a reason.

This is the agent's hot path, so it checks plain dicts with precomputed bounds instead of
building a pydantic model per record. It never raises: anything wrong with the input
becomes a ``Quarantined`` entry so that one bad record cannot cost the good ones beside it.
Values are kept raw (validated, in spec field order); normalization is ``spec.transform``.

This module is the reference: the agent cleans micro-batches with ``batch.clean_payloads``,
which decides exactly as ``clean_payload`` does (tests prove it) and asks this module for
every quarantine reason. Payloads are decoded by orjson (about twice as fast as the stdlib
here); whatever orjson refuses is decoded again by the stdlib, so a payload with an
``1e999`` or a ``NaN`` literal is judged exactly as before. The one visible difference:
integers beyond 64 bits arrive as floats of the same value, which is why reasons name JSON
types ("number") rather than Python ones.

A payload is one record object, an array of them, or the packed form (``Packed``: field names
once, one array per record), which saves the sender and the agent every repeated field name.
A packed row is judged as the record object it stands for, so both forms share every rule
and every reason; only a header that leaves no row readable quarantines the whole payload.
A payload that starts with the binary frame's magic is no JSON at all: ``frame.decode_frame``
reads it (``Frame``), and each of its records is judged as the JSON record object it stands
for (``Frame.record``: NaN is null), quarantined as that object re-serialized.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson

from edge_agent.pipeline.frame import Frame, decode_frame, is_frame
from shared.errors import PayloadError
from shared.features import FeatureSpec
from shared.schemas import MAX_JSON_PAYLOAD_BYTES, PACKED_INGEST_KEYS, SCHEMA_VERSION, loads_json, short_repr

RECORD_KEYS = frozenset({"schema_version", "record_id", "ts", "features"})
# json.dumps(obj, separators=(",", ":")) without building an encoder per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
MAX_RECORD_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class CleanRecord:
    record_id: str
    ts: float
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Quarantined:
    record_id: str | None
    reason: str
    raw: bytes


@dataclass(slots=True)
class CleanResult:
    accepted: list[CleanRecord] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row of a packed payload that cannot stand for a record (not an array of the right
    length): the reference quarantines it with ``reason``, keeping the row as it came."""

    reason: str
    row: Any


@dataclass(frozen=True, slots=True)
class Packed:
    """A packed payload: the field names once, then one array per record,
    ``[record_id, ts, value of fields[0], value of fields[1], ...]``.

    A row of the right length means exactly the record object
    ``{"schema_version": 1, "record_id": row[0], "ts": row[1], "features": {fields[i]: row[2 + i]}}``,
    so every rule (and every quarantine reason) of a record applies to it unchanged."""

    fields: tuple[str, ...]
    rows: list[Any]

    def record(self, i: int) -> Any:
        """Row ``i`` as the record object it stands for (a ``BadRow`` when it cannot)."""
        row = self.rows[i]
        size = len(self.fields) + 2
        if type(row) is not list:
            return BadRow(f"packed row is not a JSON array but {_json_type(row)}", row)
        if len(row) != size:
            return BadRow(f"packed row has {len(row)} values, expected {size} (record_id, ts, then one per field)", row)
        return {
            "schema_version": SCHEMA_VERSION,
            "record_id": row[0],
            "ts": row[1],
            "features": dict(zip(self.fields, row[2:], strict=True)),
        }


class RecordError(Exception):
    """Internal: the reason a record is quarantined."""


@dataclass(frozen=True, slots=True)
class Checker:
    names: tuple[str, ...]
    name_set: frozenset[str]
    bounds: tuple[tuple[str, float, float], ...]
    # features dict -> tuple of its values in spec order (KeyError when one is missing)
    getter: Callable[[dict[str, Any]], tuple[Any, ...]]


_CHECKERS: dict[int, tuple[FeatureSpec, Checker]] = {}


def checker_for(spec: FeatureSpec) -> Checker:
    # Keyed by identity (and the spec kept alive) so a spec is indexed once, not per payload.
    hit = _CHECKERS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    names = spec.names
    getter: Callable[[dict[str, Any]], tuple[Any, ...]]
    if len(names) == 1:
        only = names[0]
        getter = lambda features: (features[only],)  # noqa: E731  # itemgetter of one key returns no tuple
    else:
        getter = itemgetter(*names)
    checker = Checker(
        names=names,
        name_set=frozenset(names),
        bounds=tuple((f.name, f.min, f.max) for f in spec.fields),
        getter=getter,
    )
    if len(_CHECKERS) > 64:
        _CHECKERS.clear()
    _CHECKERS[id(spec)] = (spec, checker)
    return checker


def _number(value: Any, what: str) -> float:
    kind = type(value)  # exact type: bool is a subclass of int and must be refused
    if kind is float:
        number: float = value
    elif kind is int:
        try:
            number = float(value)
        except OverflowError:
            raise RecordError(f"{what}: integer too large") from None
    else:
        raise RecordError(f"{what}: expected a number, got {_json_type(value)}")
    if not math.isfinite(number):
        raise RecordError(f"{what}: not a finite number ({number})")
    return number


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _names(keys: Any, limit: int = 5) -> str:
    items = sorted(str(k) for k in keys)
    shown = ", ".join(repr(k[:40]) for k in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_record(obj: Any, checker: Checker) -> CleanRecord:
    if type(obj) is not dict:
        raise RecordError(f"record is not a JSON object but {_json_type(obj)}")
    keys = obj.keys()
    if keys != RECORD_KEYS:
        unknown = keys - RECORD_KEYS
        if unknown:
            raise RecordError(f"unknown keys: {_names(unknown)}")
        raise RecordError(f"missing keys: {_names(RECORD_KEYS - keys)}")
    version = obj["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise RecordError(f"unsupported schema_version {short_repr(version)} (expected {SCHEMA_VERSION})")
    ts = _number(obj["ts"], "ts")
    features = obj["features"]
    if type(features) is not dict:
        raise RecordError(f"features is not a JSON object but {_json_type(features)}")
    if len(features) != len(checker.names) or features.keys() != checker.name_set:
        unknown = features.keys() - checker.name_set
        if unknown:
            raise RecordError(f"unknown features: {_names(unknown)}")
        raise RecordError(f"missing features: {_names(checker.name_set - features.keys())}")
    values: list[float] = []
    append = values.append
    for name, low, high in checker.bounds:
        value = _number(features[name], f"feature {name!r}")
        if value < low or value > high:
            raise RecordError(f"feature {name!r}: {value} outside [{low}, {high}]")
        append(value)
    return CleanRecord(obj["record_id"], ts, tuple(values))


def valid_record_id(rid: Any) -> bool:
    """1..128 characters that UTF-8 can encode: a JSON escape (``"\\ud800"``) can name a
    lone surrogate, which the store cannot write."""
    return type(rid) is str and 0 < len(rid) <= MAX_RECORD_ID_CHARS and (rid.isascii() or _encodable(rid))


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def record_id_of(obj: Any) -> str | None:
    if type(obj) is dict:
        rid = obj.get("record_id")
        if valid_record_id(rid):
            return rid
    return None


def _bad_id_reason(obj: dict[str, Any]) -> str:
    rid = obj.get("record_id")
    if type(rid) is not str:
        return f"record_id: expected a string, got {_json_type(rid)}"
    if not 0 < len(rid) <= MAX_RECORD_ID_CHARS:
        return f"record_id: length {len(rid)} not within 1..{MAX_RECORD_ID_CHARS}"
    return "record_id: not valid Unicode (a lone surrogate escape)"


def decode_payload(payload: bytes) -> Any:
    """JSON bytes to Python objects; ``PayloadError`` with the reason when they are not JSON."""
    if len(payload) > MAX_JSON_PAYLOAD_BYTES:
        raise PayloadError(f"payload too large: {len(payload)} bytes > {MAX_JSON_PAYLOAD_BYTES}")
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return loads_json(payload)  # the stdlib's values (1e999 -> inf) and error messages


def payload_items(payload: bytes, names: tuple[str, ...]) -> tuple[list[Any], bool] | Packed | Frame | Quarantined:
    """The records of one payload (and whether it was a single object), its rows when it is
    packed, its arrays (in the order of ``names``, the spec's) when it is a binary frame, or
    why it has none."""
    if is_frame(payload):
        try:
            return decode_frame(payload, names)
        except PayloadError as exc:
            return Quarantined(None, str(exc), payload)
    try:
        doc = decode_payload(payload)
    except PayloadError as exc:
        return Quarantined(None, str(exc), payload)
    if type(doc) is dict:
        if "rows" in doc:
            return _packed(doc, payload)
        return [doc], True
    if type(doc) is list:
        if not doc:
            return Quarantined(None, "empty record array", payload)
        return doc, False
    return Quarantined(None, f"payload is not a JSON object or array but {_json_type(doc)}", payload)


def _packed(doc: dict[str, Any], payload: bytes) -> Packed | Quarantined:
    """The header of a packed payload: anything wrong there leaves no row readable."""
    keys = doc.keys()
    if keys != PACKED_INGEST_KEYS:
        unknown = keys - PACKED_INGEST_KEYS
        which = f"unknown keys: {_names(unknown)}" if unknown else f"missing keys: {_names(PACKED_INGEST_KEYS - keys)}"
        return Quarantined(None, f"packed payload: {which}", payload)
    version = doc["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        reason = f"packed payload: unsupported schema_version {short_repr(version)} (expected {SCHEMA_VERSION})"
        return Quarantined(None, reason, payload)
    fields, rows = doc["fields"], doc["rows"]
    if type(fields) is not list or not all(type(f) is str for f in fields):
        return Quarantined(None, "packed payload: fields is not an array of strings", payload)
    if len(set(fields)) != len(fields):
        return Quarantined(None, "packed payload: a field is named twice", payload)
    if type(rows) is not list:
        return Quarantined(None, f"packed payload: rows is not a JSON array but {_json_type(rows)}", payload)
    if not rows:
        return Quarantined(None, "empty record array", payload)
    return Packed(tuple(fields), rows)


def clean_record(obj: Any, checker: Checker) -> CleanRecord:
    """One decoded record to a ``CleanRecord``; raises ``RecordError`` with the reason."""
    if type(obj) is BadRow:
        raise RecordError(obj.reason)
    rid = record_id_of(obj)
    if rid is None and type(obj) is dict and "record_id" in obj:
        raise RecordError(_bad_id_reason(obj))
    return _check_record(obj, checker)


def record_raw(obj: Any, payload: bytes, single: bool) -> bytes:
    """What is kept of a quarantined record: its payload, or the record re-serialized (a record
    of a binary frame always: the JSON record object it stands for)."""
    if single:
        return payload
    if type(obj) is BadRow:
        obj = obj.row
    try:
        return record_bytes(obj)
    except (RecursionError, ValueError):  # absurdly nested: keep the whole payload instead
        return payload


def record_bytes(obj: Any) -> bytes:
    """A decoded record re-serialized as compact JSON (the stdlib's: NaN and infinities as the
    literals it decodes again)."""
    return _COMPACT.encode(obj).encode("utf-8")


def clean_payload(payload: bytes, spec: FeatureSpec, seen: Callable[[str], bool] | set[str]) -> CleanResult:
    """Split and validate one ingest message; duplicates (``seen`` or earlier in it) are quarantined."""
    result = CleanResult()
    checker = checker_for(spec)
    parsed = payload_items(payload, checker.names)
    if isinstance(parsed, Quarantined):
        result.quarantined.append(parsed)
        return result
    if isinstance(parsed, Packed):
        items, single = [parsed.record(i) for i in range(len(parsed.rows))], False
    elif isinstance(parsed, Frame):
        items, single = [parsed.record(i) for i in range(len(parsed))], False
    else:
        items, single = parsed
    is_seen = seen.__contains__ if isinstance(seen, set) else seen
    local: set[str] = set()
    for obj in items:
        try:
            record = clean_record(obj, checker)
            if record.record_id in local or is_seen(record.record_id):
                raise RecordError(f"duplicate record_id {record.record_id!r}")
        except RecordError as exc:
            result.quarantined.append(Quarantined(record_id_of(obj), str(exc), record_raw(obj, payload, single)))
            continue
        local.add(record.record_id)
        result.accepted.append(record)
    return result
