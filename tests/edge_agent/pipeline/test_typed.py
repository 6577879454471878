"""The typed decoder: it takes plain, valid JSON payloads whole and reads them as the general
decoder does; everything else it leaves to the general path (and its reasons)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.pipeline import clean_payloads
from edge_agent.pipeline.typed import TypedPacked, TypedRecords, typed_decoder
from shared.features import FeatureSpec
from shared.schemas import MAX_JSON_PAYLOAD_BYTES
from tests.edge_agent.agent_testlib import NAMES, payload, record
from tests.edge_agent.pipeline.test_batch import as_row, assert_same, packed, with_value


def decode(body: bytes) -> TypedRecords | TypedPacked | None:
    return typed_decoder(NAMES).decode(body)


def test_plain_payloads_are_taken_whole(spec: FeatureSpec) -> None:
    objs = [record("r1"), record("r2", values=(1.0, 2.0, 3.0, 4.0), ts=9)]
    many = decode(payload(objs))
    assert isinstance(many, TypedRecords)
    assert (many.record_ids, many.ts, many.single) == (["r1", "r2"], [1.0, 9.0], False)
    assert many.rows == [(0.1, -0.2, 0.3, 12.5), (1.0, 2.0, 3.0, 4.0)]
    one = decode(payload(objs[0]))
    assert isinstance(one, TypedRecords)
    assert (one.record_ids, one.single) == (["r1"], True)
    reordered = ("amount", "c", "a", "b")
    rows = decode(packed([as_row(o, reordered) for o in objs], reordered))
    assert isinstance(rows, TypedPacked)
    assert rows.fields == reordered
    assert rows.rows[1] == ("r2", 9.0, 4.0, 3.0, 1.0, 2.0)
    for body in (payload(objs), payload(objs[0]), packed([as_row(o) for o in objs])):
        assert_same([body], spec)
    assert_same([packed([as_row(o, reordered) for o in objs], reordered)], spec)


TOO_LONG = "r" * 129
REFUSED: list[Any] = [
    with_value("null", "a", None),
    with_value("bool", "a", True),
    with_value("str", "a", "1.5"),
    with_value("list", "a", [1.0]),
    {**record("v2"), "schema_version": 2},
    {**record("vbool"), "schema_version": True},
    {**record("vfloat"), "schema_version": 1.0},
    {**record("x"), "record_id": ""},
    {**record("x"), "record_id": TOO_LONG},
    {**record("x"), "record_id": 5},
    record("str-ts", ts="now"),  # type: ignore[arg-type]
    record("extra", extra=1),
    {k: v for k, v in record("missing").items() if k != "ts"},
    {**record("feat"), "features": {**record("feat")["features"], "zzz": 1.0}},
    {**record("few"), "features": {"a": 0.0}},
    {**record("both"), "rows": [as_row(record("b"))]},
]
REFUSED_TEXT: list[bytes] = [
    b"[]",
    b"{}",
    b"1",
    b"{not json",
    b"\xff\xfe",
    b"\xef\xbb\xbf" + payload(record("bom")),
    payload(record("a")) + b" x",
    payload(record("a")).replace(b"0.1", b"1e999"),
    payload(record("a")).replace(b"0.1", b"NaN"),
    payload(record("a")).replace(b"0.1", b"1" + b"0" * 400),
    payload(record("a")).replace(b'"a"', b'"\\ud800"'),  # a lone surrogate as a feature name
    payload(record("\ud800")),
    payload(record("r\x01")).replace(b"\\u0001", b"\x01"),  # a raw control character
    payload([record("a"), 1]),
    packed([]),
    packed([as_row(record("x"))], extra=1),
    packed([as_row(record("x"))], schema_version=2),
    packed([as_row(record("x"))], ("a", "b", "c", "zzz")),
    packed([as_row(record("x"))], ("a", "a", "c", "amount")),
    packed([as_row(record("x")), [1, 2]]),
    packed([as_row(record("x")), "row"]),
    packed([as_row(with_value("null", "a", None))]),
    json.dumps({"schema_version": 1, "rows": [as_row(record("x"))]}).encode(),
    b"[" + b" " * MAX_JSON_PAYLOAD_BYTES + payload(record("big")) + b"]",
]


@pytest.mark.parametrize("body", [payload(obj) for obj in REFUSED] + REFUSED_TEXT)
def test_anything_unusual_is_left_to_the_general_path(spec: FeatureSpec, body: bytes) -> None:
    assert decode(body) is None
    assert_same([body, payload(record("after"))], spec)


def test_records_the_batch_refuses_are_explained_from_the_payload(spec: FeatureSpec) -> None:
    """A typed payload's record out of bounds, or a duplicate, is quarantined as the general
    path would: the reason from the reference, the record re-serialized as it came."""
    objs = [record("ok"), with_value("high", "a", 11.0), record("ok"), record("stored")]
    body = payload(objs)
    assert decode(body) is not None
    got = clean_payloads([body], spec, {"stored"})
    assert got.accepted.record_ids == ["ok"]
    assert [(q.record_id, q.reason) for q in got.quarantined] == [
        ("high", "feature 'a': 11.0 outside [-10.0, 10.0]"),
        ("ok", "duplicate record_id 'ok'"),
        ("stored", "duplicate record_id 'stored'"),
    ]
    assert [json.loads(q.raw) for q in got.quarantined] == objs[1:]
    single = payload(with_value("high", "a", 11.0))
    assert decode(single) is not None
    assert clean_payloads([single], spec).quarantined[0].raw == single  # a single object: the payload
    rows = packed([as_row(o) for o in objs])
    assert decode(rows) is not None
    assert_same([body, single, rows], spec, stored={"stored"})


def test_a_key_given_twice_counts_its_last_value(spec: FeatureSpec) -> None:
    body = (
        payload([record("r1")]).replace(b'"a": 0.1', b'"a": 5.0, "a": 0.1').replace(b'"r1"', b'"x", "record_id": "r1"')
    )
    assert b'"a": 5.0, "a": 0.1' in body
    typed = decode(body)
    assert isinstance(typed, TypedRecords)
    assert (typed.record_ids, typed.rows[0][0]) == (["r1"], 0.1)
    assert_same([body], spec)


def test_escaped_and_unicode_ids_read_alike(spec: FeatureSpec) -> None:
    ids = ["caf\u00e9", "\U0001f600" * 128, "a\\/b", 'q"uote', "tab\there", "\u2028"]
    body = payload([record(rid) for rid in ids])
    typed = decode(body)
    assert isinstance(typed, TypedRecords)
    assert typed.record_ids == ids
    raw = json.dumps([record(rid) for rid in ids], ensure_ascii=False).encode()
    assert decode(raw) is not None
    assert_same([body, raw.replace(b"caf", b"cafe")], spec)


def test_odd_feature_names_are_matched_as_text() -> None:
    names = ("class", "a b", "1x", "")
    decoder = typed_decoder(names)
    features = dict(zip(names, (1, 2.5, -3, 0), strict=True))
    body = json.dumps({"schema_version": 1, "record_id": "r", "ts": 0, "features": features}).encode()
    typed = decoder.decode(body)
    assert isinstance(typed, TypedRecords)
    assert typed.rows == [(1.0, 2.5, -3.0, 0.0)]


# -- numbers: the typed decoder rounds decimal text as orjson (or the stdlib) does -------------

digits = st.text("0123456789", min_size=1, max_size=30)


@st.composite
def number_text(draw: st.DrawFn) -> str:
    whole = draw(st.sampled_from(["0", *"123456789"])) + (draw(digits) if draw(st.booleans()) else "")
    if whole.startswith("0"):
        whole = "0"
    text = draw(st.sampled_from(["", "-"])) + whole
    if draw(st.booleans()):
        text += "." + draw(digits)
    if draw(st.booleans()):
        text += draw(st.sampled_from(["e", "E"])) + draw(st.sampled_from(["", "+", "-"]))
        text += str(draw(st.integers(0, 330)))
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(number_text(), min_size=5, max_size=5))
def test_number_text_reads_alike(spec: FeatureSpec, numbers: list[str]) -> None:
    template = {"schema_version": 1, "record_id": "n", "ts": "TS", "features": {n: n.upper() for n in NAMES}}
    text = json.dumps(template).replace('"TS"', numbers[0])
    for name, number in zip(NAMES, numbers[1:], strict=True):
        text = text.replace(f'"{name.upper()}"', number)
    row = "[" + ", ".join(['"p"', *numbers]) + "]"
    rows = f'{{"schema_version": 1, "fields": {json.dumps(list(NAMES))}, "rows": [{row}]}}'
    for body in (text.encode(), rows.encode()):
        if all(math.isfinite(float(n)) for n in numbers):  # else both decoders refuse it
            assert decode(body) is not None
        assert_same([body], spec)


@pytest.mark.parametrize(
    "number",
    ["-0", "-0.0", "0e5", "-0e-5", "4.9e-324", "2.4703282292062328e-324", "2.4703282292062327e-324",
     "1.7976931348623157e308", "9007199254740993", "18446744073709551615", "18446744073709551617",
     "-9223372036854775809", "123456789012345678901234567890", "0.1000000000000000055511151231257827",
     "1e-400", "-1e-400", "1E2", "1e+2"],
)  # fmt: skip
def test_edge_numbers_read_alike(spec: FeatureSpec, number: str) -> None:
    """Signed zeros, subnormals, integers at 2**53 and 2**64, long mantissas, underflow."""
    body = payload([record("e")]).replace(b"-0.2", number.encode()).replace(b'"ts": 1.0', b'"ts": ' + number.encode())
    typed = decode(body)
    assert isinstance(typed, TypedRecords)
    want = float(json.loads(body)[0]["features"]["b"])  # the stdlib's reading, int or float
    assert np.float64(typed.rows[0][1]).tobytes() == np.float64(want).tobytes()
    assert np.float64(typed.ts[0]).tobytes() == np.float64(want).tobytes()
    assert_same([body], spec)


@pytest.mark.parametrize(
    "number",
    [2**53 + 1, 2**63, -(2**63) - 1, 2**64 - 1, 2**64 + 1, 2**1000 + 2**947, 2**1000 + 2**947 + 1, 2**1023 + 1,
     2**1024 - 2**971, 2**1024 - 2**970, 10**400],
)  # fmt: skip
def test_integers_read_as_float_reads_them(spec: FeatureSpec, number: int) -> None:
    """Ties round to even, as ``float()`` does; what ``float()`` cannot hold is refused."""
    body = json.dumps({**record("i", ts=number), "features": {"a": number, "b": 0, "c": 0, "amount": 0}}).encode()
    typed = decode(body)
    try:
        want: float | None = float(number)
    except OverflowError:
        want = None
    if want is None:
        assert typed is None
    else:
        assert isinstance(typed, TypedRecords)
        assert (typed.ts[0], typed.rows[0][0]) == (want, want)
    assert_same([body], spec)
