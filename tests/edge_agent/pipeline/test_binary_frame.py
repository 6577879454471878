"""The binary ingest frame: valid frames, every malformed class, and the same decisions as JSON.

A record of a frame means the JSON record object with the same id, ts and values (NaN is
null), so cleaning a frame must decide, and give reasons, exactly as cleaning that JSON.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.pipeline import Quarantined, clean_payload, clean_payloads
from shared.features import FeatureSpec
from shared.schemas import BINARY_INGEST_MAGIC, MAX_JSON_PAYLOAD_BYTES, binary_ingest_bytes
from tests.edge_agent.agent_testlib import GOOD, NAMES, payload, record
from tests.edge_agent.pipeline.test_batch import assert_same, bits, packed_payloads, payloads

NAN, INF = math.nan, math.inf


def frame(ids: list[Any], rows: list[tuple[float, ...]], fields: tuple[str, ...] = NAMES, ts: Any = None) -> bytes:
    times = [float(i) for i in range(len(ids))] if ts is None else ts
    return binary_ingest_bytes(fields, ids, times, rows)


def raw_frame(header: Any, body: bytes = b"", header_len: int | None = None) -> bytes:
    """A frame built by hand, whatever its header holds (no padding)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(text) if header_len is None else header_len
    return BINARY_INGEST_MAGIC + struct.pack("<I", size) + text + body


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def json_number(value: float) -> Any:
    """How JSON writes a float of the frame: NaN is null, infinities overflow a literal."""
    if value != value:
        return None
    if math.isinf(value):
        return "__INF__" if value > 0 else "__-INF__"
    return value


def json_twin(ids: list[Any], ts: list[float], rows: list[tuple[float, ...]], fields: tuple[str, ...] = NAMES) -> bytes:
    """The same records as a JSON array of record objects, features in the frame's field order."""
    objs = [
        {
            "schema_version": 1,
            "record_id": rid,
            "ts": json_number(t),
            "features": {f: json_number(v) for f, v in zip(fields, row, strict=True)},
        }
        for rid, t, row in zip(ids, ts, rows, strict=True)
    ]
    return json.dumps(objs).replace('"__INF__"', "1e999").replace('"__-INF__"', "-1e999").encode()


def decisions(quarantined: list[Quarantined]) -> list[tuple[str | None, str, Any]]:
    """Record id, reason, and what is kept as data (key order aside)."""
    return [(q.record_id, q.reason, json.loads(q.raw)) for q in quarantined]


# -- valid frames ---------------------------------------------------------------------------


def test_valid_frame_is_accepted_with_exact_values(spec: FeatureSpec) -> None:
    rows = [GOOD, (1.0, -0.0, 10.0, 0.0), (-10.0, 5e-324, 3.0, 9999.5)]
    body = frame(["a", "b", "c"], rows, ts=[5.0, -1.5, 1e12])
    assert body.startswith(b"FFB1")
    assert (len(body) - 8 * 3 * 5) % 8 == 0  # the numbers start on a multiple of 8
    objs = [record(r, values=v, ts=t) for r, v, t in zip("abc", rows, [5.0, -1.5, 1e12], strict=True)]
    want = clean_payload(payload(objs), spec, set())
    got = clean_payload(body, spec, set())
    assert not got.quarantined
    assert bits(got.accepted) == bits(want.accepted)
    batch = clean_payloads([body], spec)
    assert not batch.quarantined
    assert bits(batch.accepted.records()) == bits(want.accepted)
    assert batch.accepted.values.flags.writeable
    assert batch.accepted.values.flags.c_contiguous


def test_fields_in_any_order_are_reordered_to_the_spec(spec: FeatureSpec) -> None:
    fields = ("amount", "c", "a", "b")
    body = frame(["r1"], [(12.5, 0.3, 0.1, -0.2)], fields)
    [rec] = clean_payload(body, spec, set()).accepted
    assert rec.values == GOOD
    assert clean_payloads([body], spec).accepted.records() == [rec]


def test_unpadded_header_decodes_too(spec: FeatureSpec) -> None:
    header = {"schema_version": 1, "fields": list(NAMES), "record_ids": ["u1", "u2"]}
    body = raw_frame(header, floats(1.0, 2.0) + floats(*GOOD) + floats(*GOOD))
    assert (len(body) - 48) % 8 != 0  # the numbers start off a multiple of 8
    assert [r.record_id for r in clean_payload(body, spec, set()).accepted] == ["u1", "u2"]
    assert_same([body], spec)


def test_frames_mixed_with_json_keep_arrival_order(spec: FeatureSpec) -> None:
    batch = [
        payload(record("j1")),
        frame(["f1", "f2"], [GOOD, GOOD]),
        payload([record("j2"), record("f1")]),  # f1: a duplicate of the frame's record
        frame(["f3", "j1"], [GOOD, GOOD]),  # j1: a duplicate of the first payload's
    ]
    result = clean_payloads(batch, spec)
    assert result.accepted.record_ids == ["j1", "f1", "f2", "j2", "f3"]
    assert [(q.record_id, q.reason) for q in result.quarantined] == [
        ("f1", "duplicate record_id 'f1'"),
        ("j1", "duplicate record_id 'j1'"),
    ]
    assert_same(batch, spec)


# -- a frame that leaves no record readable ---------------------------------------------------

HEADER = {"schema_version": 1, "fields": list(NAMES), "record_ids": ["x"]}
ONE = floats(1.0, *GOOD)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"FFB1", "binary frame: truncated (4 bytes, the magic and header length take 8)"),
        (raw_frame(HEADER, ONE, header_len=10_000), "binary frame: truncated header (10000 bytes declared"),
        (raw_frame(HEADER, ONE[:-8]), "binary frame: 32 bytes after the header, expected 40 (1 timestamps and 1 x 4"),
        (raw_frame(HEADER, ONE + b"\0"), "binary frame: 41 bytes after the header, expected 40"),
        (raw_frame(b"{not json", ONE), "binary frame: header is not JSON"),
        (raw_frame(b"\xff\xfe", ONE), "binary frame: header is not JSON"),
        (raw_frame([1, 2], ONE), "binary frame: header is not a JSON object"),
        (raw_frame(HEADER | {"n": 1}, ONE), "binary frame: unknown keys: 'n'"),
        (raw_frame({"schema_version": 1, "fields": list(NAMES)}, ONE), "binary frame: missing keys: 'record_ids'"),
        (raw_frame(HEADER | {"schema_version": 2}, ONE), "binary frame: unsupported schema_version 2 (expected 1)"),
        (raw_frame(HEADER | {"schema_version": True}, ONE), "binary frame: unsupported schema_version True"),
        (raw_frame(HEADER | {"fields": ["a", "b", "c", 4]}, ONE), "binary frame: fields is not an array of strings"),
        (raw_frame(HEADER | {"fields": "abc"}, ONE), "binary frame: fields is not an array of strings"),
        (raw_frame(HEADER | {"fields": ["a", "a", "c", "amount"]}, ONE), "binary frame: a field is named twice"),
        (raw_frame(HEADER | {"fields": ["a", "b", "c", "zzz"]}, ONE), "binary frame: unknown fields: 'zzz'"),
        (
            raw_frame(HEADER | {"fields": ["a", "b", "c"]}, floats(1.0, 0.1, 0.2, 0.3)),
            "binary frame: missing fields: 'amount'",
        ),
        (raw_frame(HEADER | {"record_ids": "x"}, ONE), "binary frame: record_ids is not a JSON array"),
        (raw_frame(HEADER | {"record_ids": []}), "empty record array"),
        (frame(["big"], [GOOD]) + b"\0" * MAX_JSON_PAYLOAD_BYTES, "payload too large"),
    ],
)
def test_malformed_frame_quarantines_the_payload(spec: FeatureSpec, body: bytes, reason: str) -> None:
    result = clean_payload(body, spec, set())
    assert not result.accepted
    [q] = result.quarantined
    assert q.reason.startswith(reason), q.reason
    assert (q.record_id, q.raw) == (None, body)
    assert_same([payload(record("before")), body, frame(["after"], [GOOD])], spec)


# -- per-record problems: the reasons JSON gets --------------------------------------------------

BAD_RECORDS: list[tuple[Any, float, tuple[float, ...], str]] = [
    ("ok", 1.0, GOOD, ""),
    ("nan", 1.0, (NAN, 0.0, 0.0, 1.0), "feature 'a': expected a number, got null"),
    ("inf", 1.0, (0.0, INF, 0.0, 1.0), "feature 'b': not a finite number (inf)"),
    ("-inf", 1.0, (0.0, 0.0, -INF, 1.0), "feature 'c': not a finite number (-inf)"),
    ("high", 1.0, (0.0, 0.0, 0.0, 10_000.5), "feature 'amount': 10000.5 outside [0.0, 10000.0]"),
    ("low", 1.0, (-10.000001, 0.0, 0.0, 1.0), "feature 'a': -10.000001 outside [-10.0, 10.0]"),
    ("ts-nan", NAN, GOOD, "ts: expected a number, got null"),
    ("ts-inf", INF, GOOD, "ts: not a finite number (inf)"),
    (7, 1.0, GOOD, "record_id: expected a string, got number"),
    (None, 1.0, GOOD, "record_id: expected a string, got null"),
    (True, 1.0, GOOD, "record_id: expected a string, got boolean"),
    (["x"], 1.0, GOOD, "record_id: expected a string, got array"),
    ("", 1.0, GOOD, "record_id: length 0 not within 1..128"),
    ("r" * 129, 1.0, GOOD, "record_id: length 129 not within 1..128"),
    ("r" * 128, 1.0, GOOD, ""),
    ("ok", 1.0, GOOD, "duplicate record_id 'ok'"),
    ("stored", 1.0, GOOD, "duplicate record_id 'stored'"),
    ("ok-2", 1.0, GOOD, ""),
]


def test_bad_records_quarantined_beside_good_ones_with_the_json_reasons(spec: FeatureSpec) -> None:
    ids, ts, rows, reasons = (list(column) for column in zip(*BAD_RECORDS, strict=True))
    body = frame(ids, rows, ts=ts)
    twin = json_twin(ids, ts, rows)
    got = clean_payload(body, spec, {"stored"})
    assert [r.record_id for r in got.accepted] == ["ok", "r" * 128, "ok-2"]
    assert [q.reason for q in got.quarantined] == [r for r in reasons if r]
    want = clean_payload(twin, spec, {"stored"})
    assert bits(got.accepted) == bits(want.accepted)
    assert decisions(got.quarantined) == decisions(want.quarantined)
    # What is kept: the record as the JSON record object it stands for, NaN as null.
    nan = json.loads(got.quarantined[0].raw)
    assert nan == {
        "schema_version": 1,
        "record_id": "nan",
        "ts": 1.0,
        "features": dict(zip(NAMES, (None, 0.0, 0.0, 1.0), strict=True)),
    }
    assert_same([body], spec, stored={"stored"})
    assert_same([body], spec)


def test_bad_string_ids_among_string_ids(spec: FeatureSpec) -> None:
    body = frame(["ok", "", "r" * 129, "r" * 128], [GOOD] * 4)
    result = clean_payload(body, spec, set())
    assert [r.record_id for r in result.accepted] == ["ok", "r" * 128]
    assert [q.reason for q in result.quarantined] == [
        "record_id: length 0 not within 1..128",
        "record_id: length 129 not within 1..128",
    ]
    assert_same([body], spec)


def test_header_orjson_refuses_is_read_as_json_payloads_are(spec: FeatureSpec) -> None:
    # An integer beyond 64 bits: orjson refuses it, the stdlib reads it, the record says why.
    body = raw_frame(
        f'{{"schema_version":1,"fields":["a","b","c","amount"],"record_ids":[{2**70},"ok"]}}'.encode(),
        floats(1.0, 2.0, *GOOD, *GOOD),
    )
    result = clean_payload(body, spec, set())
    assert [r.record_id for r in result.accepted] == ["ok"]
    assert [q.reason for q in result.quarantined] == ["record_id: expected a string, got number"]
    assert_same([body], spec)


# -- random adversarial frames: the same decisions as the same records in JSON -----------------

number = st.one_of(
    st.floats(min_value=-11, max_value=11),
    st.floats(min_value=-1, max_value=10_001),
    st.floats(),  # NaN, infinities, huge and tiny
    st.sampled_from([10.0, -10.0, 0.0, -0.0, 10_000.0, NAN, INF, -INF]),
)
frame_id = st.one_of(
    st.sampled_from(["r1", "r2", "r3", "stored", "", "r" * 128, "r" * 129]),
    st.text(max_size=4),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([None, True, False, ["r1"], {"id": "r1"}]),
)
FIELD_ORDERS = [NAMES, ("amount", "c", "b", "a"), ("b", "a", "amount", "c")]


@st.composite
def frame_records(draw: st.DrawFn) -> tuple[list[Any], list[float], list[tuple[float, ...]], tuple[str, ...]]:
    n = draw(st.integers(1, 8))
    # Mostly plausible records, so that a single bad part is often what decides.
    strings = st.one_of(st.sampled_from(["r1", "r2", "r3", "r4", "r5", "", "r" * 129]), st.text(max_size=4))
    ids = draw(st.lists(st.one_of(strings, frame_id) if draw(st.booleans()) else strings, min_size=n, max_size=n))
    ts = draw(
        st.lists(
            st.one_of(st.floats(-1e6, 1e6), st.sampled_from([NAN, INF, -INF]), st.floats()), min_size=n, max_size=n
        )
    )
    plausible = st.one_of(st.floats(0, 10), st.floats(0, 10), number)
    rows = [tuple(draw(plausible) for _ in NAMES) for _ in range(n)]
    return ids, ts, rows, draw(st.sampled_from(FIELD_ORDERS))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_records(), min_size=1, max_size=5))
def test_random_frames_decide_as_their_json_twins(spec: FeatureSpec, batch: list[Any]) -> None:
    frames = [frame(ids, rows, fields, ts) for ids, ts, rows, fields in batch]
    twins = [json_twin(ids, ts, rows, fields) for ids, ts, rows, fields in batch]
    got = clean_payloads(frames, spec, {"stored"})
    want = clean_payloads(twins, spec, {"stored"})
    assert bits(got.accepted.records()) == bits(want.accepted.records())
    assert decisions(got.quarantined) == decisions(want.quarantined)
    for body, twin in zip(frames, twins, strict=True):  # the reference too, payload by payload
        one, other = clean_payload(body, spec, {"stored"}), clean_payload(twin, spec, {"stored"})
        assert bits(one.accepted) == bits(other.accepted)
        assert decisions(one.quarantined) == decisions(other.quarantined)


@st.composite
def frame_payloads(draw: st.DrawFn) -> bytes:
    ids, ts, rows, fields = draw(frame_records())
    body = frame(ids, rows, fields, ts)
    damage = draw(st.integers(0, 14))
    if damage == 0:
        return body[: draw(st.integers(0, len(body) - 1))]  # truncated anywhere
    if damage == 1:
        return body + b"\0" * 8  # one number too many
    if damage == 2:
        return frame(ids, [row[:3] for row in rows], fields[:3], ts)  # a field missing
    return body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(frame_payloads(), payloads(), packed_payloads()), min_size=1, max_size=6))
def test_random_frames_among_json_batches_match_reference(spec: FeatureSpec, batch: list[bytes]) -> None:
    assert_same(batch, spec, stored={"stored"})


def test_encoder_refuses_columns_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="need 2 timestamps and 8 values"):
        binary_ingest_bytes(NAMES, ["a", "b"], [1.0, 2.0], [GOOD])
    assert np.frombuffer(frame(["a"], [GOOD])[-32:], dtype="<f8").tolist() == list(GOOD)
