"""Typed decoding of the JSON ingest forms: a payload of plain, valid records straight into
Python values, without a dict per record.

orjson builds two dicts per record object (the record, its features) and the cleaning then
reads them back key by key; decoding ~8 KB of record objects and columnarising them cost
about half of what an ingested record cost (figure 3b). msgspec decodes into types built
from the spec instead: each record's features come out as one struct, read as a tuple in
the spec's order, and the decoder itself checks what the fast path checked in Python (the
four keys and no other, ``schema_version`` 1, an id of 1 to 128 characters, numbers where
numbers belong). It is only a shortcut: anything it refuses (a missing value, a boolean, an
unknown key, a number out of float range, broken JSON...) returns None, and the payload
goes through ``cleaning.payload_items`` as before, where the quarantine reasons are
written. What it accepts, the general path reads as the same values:

- numbers: both decoders round decimal text to the nearest float, and an integer becomes
  the float ``float()`` makes of it (``-0`` is 0.0, ``-0.0`` stays -0.0); what overflows a
  float (``1e999``) is refused here, as orjson refuses it;
- strings: standard JSON unescaping; invalid UTF-8, lone surrogates and control characters
  are refused here;
- a key given twice: the last value counts, as in a dict.

The bounds of the values are not checked here but by the batch (``batch.py``), as for every
other candidate. ``tests/edge_agent/pipeline/test_typed.py`` checks the agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from edge_agent.pipeline.cleaning import MAX_RECORD_ID_CHARS
from shared.schemas import MAX_JSON_PAYLOAD_BYTES, SCHEMA_VERSION

_RECORD_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RECORD_ID_CHARS)]
_VERSION: Any = Literal[SCHEMA_VERSION]  # an int: JSON true and 1.0 are refused


@dataclass(frozen=True, slots=True)
class TypedRecords:
    """Record objects (or one), every one of the right shape: ids, finite timestamps, and
    each record's feature values in the spec's order (finite, bounds not yet checked)."""

    record_ids: list[str]
    ts: list[float]
    rows: list[tuple[float, ...]]
    single: bool


@dataclass(frozen=True, slots=True)
class TypedPacked:
    """A packed payload whose rows are all of the right shape, ``(record_id, ts, value...)``
    with the values in the order of ``fields`` (a permutation of the spec's names)."""

    fields: tuple[str, ...]
    rows: list[tuple[Any, ...]]


class TypedDecoder:
    """msgspec decoders for one spec's features (build once per spec: ``typed_decoder``)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._name_set = frozenset(names)
        unset = msgspec.UNSET
        # gc=False: these structs hold no references that could form a cycle, and leaving
        # them out of the collector saves its passes over every decoded record.
        # Struct fields f0, f1... named on the wire as the spec's features: any string works.
        slots = [f"f{i}" for i in range(len(names))]
        features = msgspec.defstruct(
            "Features",
            [(slot, float) for slot in slots],
            rename=dict(zip(slots, names, strict=True)),
            forbid_unknown_fields=True,
            gc=False,
        )
        record = msgspec.defstruct(
            "Record",
            [("schema_version", _VERSION), ("record_id", _RECORD_ID), ("ts", float), ("features", features)],
            forbid_unknown_fields=True,
            gc=False,
        )
        row: Any = tuple[(_RECORD_ID, float, *([float] * len(names)))]  # type: ignore[misc]
        # A JSON object is a single record or a packed payload; which keys it holds tells them
        # apart after one decode (a key it lacks stays UNSET).
        obj = msgspec.defstruct(
            "Payload",
            [
                ("schema_version", _VERSION | msgspec.UnsetType, unset),
                ("record_id", _RECORD_ID | msgspec.UnsetType, unset),
                ("ts", float | msgspec.UnsetType, unset),
                ("features", features | msgspec.UnsetType, unset),
                ("fields", list[str] | msgspec.UnsetType, unset),
                ("rows", list[row] | msgspec.UnsetType, unset),
            ],
            forbid_unknown_fields=True,
            gc=False,
        )
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(list[record] | obj)  # type: ignore[valid-type]
        self._astuple = msgspec.structs.astuple

    def decode(self, payload: bytes) -> TypedRecords | TypedPacked | None:
        """The payload's records when every one has the right shape; None otherwise (the
        general path then decides, and explains)."""
        if len(payload) > MAX_JSON_PAYLOAD_BYTES:
            return None
        try:
            doc = self._decoder.decode(payload)
        except (msgspec.MsgspecError, ValueError):  # ValueError: invalid UTF-8
            return None
        astuple = self._astuple
        if type(doc) is list:
            if not doc:
                return None  # "empty record array"
            return TypedRecords(
                [r.record_id for r in doc], [r.ts for r in doc], [astuple(r.features) for r in doc], False
            )
        unset = msgspec.UNSET
        if doc.schema_version is unset:
            return None
        if doc.rows is unset:
            if doc.fields is not unset or unset in (doc.record_id, doc.ts, doc.features):
                return None
            return TypedRecords([doc.record_id], [doc.ts], [astuple(doc.features)], True)
        if (
            doc.fields is unset
            or not doc.rows
            or unset is not doc.record_id
            or unset is not doc.ts
            or unset is not doc.features
        ):
            return None
        fields = tuple(doc.fields)
        if len(fields) != len(self.names) or frozenset(fields) != self._name_set:
            return None  # another spec's fields, or one named twice: the general path names them
        return TypedPacked(fields, doc.rows)


_DECODERS: dict[tuple[str, ...], TypedDecoder] = {}


def typed_decoder(names: tuple[str, ...]) -> TypedDecoder:
    """The decoder of a spec's feature names, built once (a few hundred µs) and kept."""
    decoder = _DECODERS.get(names)
    if decoder is None:
        if len(_DECODERS) > 16:
            _DECODERS.clear()
        decoder = _DECODERS[names] = TypedDecoder(names)
    return decoder
