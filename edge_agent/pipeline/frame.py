"""The binary ingest frame (``shared.schemas.binary_ingest_bytes``) decoded into arrays.

A frame carries its numbers as float64 LE, so decoding is two ``np.frombuffer`` views and
one copy into spec order: no JSON number is parsed and no Python object is made per value.
Only the small JSON header (field names, record ids) goes through a JSON decoder.

Anything wrong with the frame as a whole (truncated, a header that is not the expected JSON,
another ``schema_version``, fields that are not exactly the spec's, a body of the wrong
length) leaves no record readable: ``decode_frame`` raises ``PayloadError`` with the reason
and the cleaning quarantines the payload. Everything else is a matter of single records, and
a record of the frame means exactly the JSON record object ``Frame.record`` builds (NaN is
JSON null), so the cleaning judges it by the same rules and reasons as any record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from shared.errors import PayloadError
from shared.schemas import (
    BINARY_INGEST_KEYS,
    BINARY_INGEST_MAGIC,
    BINARY_INGEST_PREFIX,
    MAX_JSON_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    ingest_record_object,
    loads_json,
    short_repr,
)

_FLOAT = np.dtype("<f8")


@dataclass(frozen=True, slots=True)
class Frame:
    """The records of one frame, column-wise and in spec order (``values[:, j]`` is the spec's
    ``names[j]``); ``record_ids`` as the header holds them, of any JSON type."""

    names: tuple[str, ...]
    record_ids: list[Any]
    ts: npt.NDArray[np.float64]  # (n,), may be a read-only view of the payload
    values: npt.NDArray[np.float64]  # (n, width), idem

    def __len__(self) -> int:
        return len(self.record_ids)

    def record(self, i: int) -> dict[str, Any]:
        """Record ``i`` as the JSON record object it stands for: NaN becomes null (a missing
        value), infinities stay floats (what ``1e999`` decodes to)."""
        ts = float(self.ts[i])
        features = {name: None if v != v else v for name, v in zip(self.names, self.values[i].tolist(), strict=True)}
        return ingest_record_object(self.record_ids[i], None if ts != ts else ts, features)


def is_frame(payload: bytes) -> bool:
    return payload[:4] == BINARY_INGEST_MAGIC


def _header(payload: bytes) -> tuple[dict[str, Any], int]:
    """The decoded header and where the numbers start."""
    prefix = BINARY_INGEST_PREFIX.size
    if len(payload) < prefix:
        raise PayloadError(f"binary frame: truncated ({len(payload)} bytes, the magic and header length take {prefix})")
    _, size = BINARY_INGEST_PREFIX.unpack_from(payload)
    if size > len(payload) - prefix:
        raise PayloadError(f"binary frame: truncated header ({size} bytes declared, {len(payload) - prefix} follow)")
    text = payload[prefix : prefix + size]
    try:
        header = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses, the stdlib may read (as for JSON payloads), or says why not
            header = loads_json(text)
        except PayloadError as exc:
            raise PayloadError(f"binary frame: header is not JSON: {exc}") from None
    if type(header) is not dict:
        raise PayloadError("binary frame: header is not a JSON object")
    return header, prefix + size


def _names(keys: Any, limit: int = 5) -> str:
    items = sorted(str(k) for k in keys)
    shown = ", ".join(repr(k[:40]) for k in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_fields(fields: Any, names: tuple[str, ...]) -> None:
    """Fields other than ``names`` in the same order must be the same names, each once."""
    if type(fields) is not list or not all(type(f) is str for f in fields):
        raise PayloadError("binary frame: fields is not an array of strings")
    if len(set(fields)) != len(fields):
        raise PayloadError("binary frame: a field is named twice")
    unknown, missing = set(fields) - set(names), set(names) - set(fields)
    if unknown:
        raise PayloadError(f"binary frame: unknown fields: {_names(unknown)}")
    if missing:
        raise PayloadError(f"binary frame: missing fields: {_names(missing)}")


def decode_frame(payload: bytes, names: tuple[str, ...]) -> Frame:
    """One frame to its records in the order of ``names`` (the spec's); ``PayloadError`` with
    the reason when the frame as a whole is unreadable."""
    if len(payload) > MAX_JSON_PAYLOAD_BYTES:
        raise PayloadError(f"payload too large: {len(payload)} bytes > {MAX_JSON_PAYLOAD_BYTES}")
    header, start = _header(payload)
    keys = header.keys()
    if keys != BINARY_INGEST_KEYS:
        unknown = keys - BINARY_INGEST_KEYS
        which = f"unknown keys: {_names(unknown)}" if unknown else f"missing keys: {_names(BINARY_INGEST_KEYS - keys)}"
        raise PayloadError(f"binary frame: {which}")
    version = header["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise PayloadError(
            f"binary frame: unsupported schema_version {short_repr(version)} (expected {SCHEMA_VERSION})"
        )
    fields, ids = header["fields"], header["record_ids"]
    in_order = fields == list(names)  # the usual case, and then nothing else to check
    if not in_order:
        _check_fields(fields, names)
    if type(ids) is not list:
        raise PayloadError("binary frame: record_ids is not a JSON array")
    if not ids:
        raise PayloadError("empty record array")
    n, width = len(ids), len(fields)
    body, expected = len(payload) - start, 8 * n * (1 + width)
    if body != expected:
        raise PayloadError(
            f"binary frame: {body} bytes after the header, expected {expected} "
            f"({n} timestamps and {n} x {width} values, float64)"
        )
    # Read-only views of the payload where the fields come in spec order (native float64 on a
    # little-endian machine; converted elsewhere): the batch copies them once, into its arrays.
    ts = np.frombuffer(payload, dtype=_FLOAT, count=n, offset=start).astype(np.float64, copy=False)
    values = np.frombuffer(payload, dtype=_FLOAT, count=n * width, offset=start + 8 * n).reshape(n, width)
    if not in_order:
        values = values[:, [fields.index(name) for name in names]]
    return Frame(names, ids, ts, values.astype(np.float64, copy=False))
