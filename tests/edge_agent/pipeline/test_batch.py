"""Batched cleaning decides exactly as the per-record reference, on adversarial and random input."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.pipeline import CleanBatch, CleanRecord, Quarantined, clean_payload, clean_payloads
from shared.features import FeatureSpec
from tests.edge_agent.agent_testlib import GOOD, NAMES, payload, record


def sequential(
    payloads: list[bytes], spec: FeatureSpec, stored: set[str]
) -> tuple[list[CleanRecord], list[Quarantined]]:
    """What the agent did before batching: one payload after the other, accepted ids counted as seen."""
    accepted: list[CleanRecord] = []
    quarantined: list[Quarantined] = []
    ids: set[str] = set()
    for p in payloads:
        result = clean_payload(p, spec, lambda rid: rid in ids or rid in stored)
        accepted += result.accepted
        quarantined += result.quarantined
        ids.update(r.record_id for r in result.accepted)
    return accepted, quarantined


def bits(records: list[CleanRecord]) -> list[tuple[str, bytes, bytes]]:
    """Exact comparison: -0.0 and 0.0 differ here, as they would on disk."""
    return [(r.record_id, struct.pack("<d", r.ts), struct.pack(f"<{len(r.values)}d", *r.values)) for r in records]


def assert_same(payloads: list[bytes], spec: FeatureSpec, stored: set[str] | None = None) -> None:
    stored = stored or set()
    want_accepted, want_quarantined = sequential(payloads, spec, stored)
    got = clean_payloads(payloads, spec, lambda ids: {i for i in ids if i in stored})
    assert bits(got.accepted.records()) == bits(want_accepted)
    assert got.quarantined == want_quarantined
    assert got.accepted.values.dtype == np.float64
    assert got.accepted.values.shape == (len(want_accepted), spec.width)
    # A plain set of known ids is the same as the callable.
    again = clean_payloads(payloads, spec, stored)
    assert bits(again.accepted.records()) == bits(want_accepted)
    assert again.quarantined == want_quarantined


def with_value(rid: str, name: str, value: Any) -> dict[str, Any]:
    obj = record(rid)
    obj["features"][name] = value
    return obj


ADVERSARIAL: list[Any] = [
    record("ok-1"),
    with_value("nan", "a", None),
    with_value("str", "b", "1.5"),
    with_value("bool", "c", True),
    with_value("false", "a", False),
    with_value("list", "a", [1.0]),
    with_value("dict", "a", {"x": 1}),
    with_value("big", "a", 10**400),
    with_value("u64", "a", 2**64 + 1),
    with_value("int", "a", 3),
    with_value("high", "a", 10.0000001),
    with_value("edge", "a", 10.0),
    with_value("neg-zero", "a", -0.0),
    with_value("amount-low", "amount", -1e-300),
    record("int-ts", ts=7),
    record("huge-int-ts", ts=2**1100),
    record("str-ts", ts="now"),  # type: ignore[arg-type]
    record("", values=GOOD),
    {**record("x"), "record_id": 5},
    {**record("x"), "record_id": None},
    {**record("long"), "record_id": "r" * 129},
    {**record("v2"), "schema_version": 2},
    {**record("vbool"), "schema_version": True},
    record("extra", extra=1),
    {k: v for k, v in record("missing").items() if k != "ts"},
    {**record("feat"), "features": {**record("feat")["features"], "zzz": 1.0}},
    {**record("swap"), "features": {"a": 0.0, "b": 0.0, "c": 0.0, "zzz": 0.0}},
    {**record("few"), "features": {"a": 0.0}},
    {**record("notdict"), "features": [0.0, 0.0, 0.0, 0.0]},
    1,
    "text",
    None,
    [record("nested")],
    record("ok-1"),  # duplicate of the first
    record("ok-2"),
    record("ok-2"),
    record("stored"),
]


def test_adversarial_records_in_one_array(spec: FeatureSpec) -> None:
    assert_same([payload(ADVERSARIAL)], spec, stored={"stored"})


def test_adversarial_records_one_per_payload(spec: FeatureSpec) -> None:
    assert_same([payload(obj) for obj in ADVERSARIAL], spec, stored={"stored"})


def test_broken_payloads_between_good_ones(spec: FeatureSpec) -> None:
    text = payload([record("r1"), record("r2", ts=7.25)])
    payloads = [
        payload(record("a1")),
        b"{not json",
        b"",
        b"[]",
        b'"hello"',
        b"\xff\xfe",
        b"\xef\xbb\xbf" + payload(record("bom")),
        text.replace(b"7.25", b"1e999"),
        text.replace(b"0.1", b"NaN"),
        payload([record("r3")]).replace(b"0.1", b"-1e999"),
        payload(record("a1")),  # duplicate across payloads
        payload([record("r4"), record("r4")]),
    ]
    assert_same(payloads, spec)


def test_good_batch_is_all_fast_path(spec: FeatureSpec) -> None:
    rng = np.random.default_rng(0)
    rows = [record(f"r{i}", values=(*rng.uniform(-10, 10, 3).tolist(), float(rng.uniform(0, 1e4)))) for i in range(500)]
    payloads = [payload(rows[i : i + 50]) for i in range(0, 500, 50)]
    result = clean_payloads(payloads, spec)
    assert result.quarantined == []
    assert result.accepted.record_ids == [f"r{i}" for i in range(500)]
    assert_same(payloads, spec)


def test_batch_helpers(spec: FeatureSpec) -> None:
    records = [CleanRecord("a", 1.0, GOOD), CleanRecord("b", 2.0, (1.0, 2.0, 3.0, 4.0))]
    batch = CleanBatch.from_records(records, spec.width)
    assert batch.records() == records
    assert batch.take([1]).records() == records[1:]
    assert [c.record_ids for c in batch.chunks(1)] == [["a"], ["b"]]
    assert len(CleanBatch.empty(spec.width)) == 0
    with pytest.raises(ValueError, match="width"):
        CleanBatch.from_records(records, 3)


# -- random adversarial batches ------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
value = st.one_of(
    finite,
    st.floats(min_value=-12, max_value=12),  # around the [-10, 10] bounds
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([None, True, False, "1.0", [1.0], {"v": 1}, 10**400, -0.0, 2**64]),
)
rid = st.one_of(st.sampled_from(["r1", "r2", "r3", "stored"]), st.text(max_size=3), st.integers(), st.none())


@st.composite
def records(draw: st.DrawFn) -> Any:
    features: dict[str, Any] = {n: draw(st.one_of(st.floats(min_value=-9, max_value=9), value)) for n in NAMES}
    if draw(st.booleans()):
        features["amount"] = abs(features["amount"]) if isinstance(features["amount"], float) else features["amount"]
    if draw(st.integers(0, 9)) == 0:
        features.pop(draw(st.sampled_from(NAMES)))
    if draw(st.integers(0, 9)) == 0:
        features["zzz"] = 0.0
    obj: dict[str, Any] = {
        "schema_version": draw(st.sampled_from([1, 1, 1, 1, 2, True])),
        "record_id": draw(rid),
        "ts": draw(st.one_of(finite, st.integers(min_value=-(2**64), max_value=2**64), st.sampled_from(["t", None]))),
        "features": features,
    }
    if draw(st.integers(0, 19)) == 0:
        obj.pop(draw(st.sampled_from(sorted(obj))))
    if draw(st.integers(0, 19)) == 0:
        obj["extra"] = 1
    if draw(st.integers(0, 29)) == 0:
        return draw(st.sampled_from([1, "x", None, [obj]]))
    return obj


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([b"{", b"[]", b"1", b"\xff", b'[{"ts": NaN}]']))
    body = draw(records()) if kind == 1 else draw(st.lists(records(), min_size=1, max_size=8))
    text = json.dumps(body)
    if draw(st.integers(0, 9)) == 0:
        text = text.replace("1.0", "1e999", 1)
    return text.encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads(), min_size=1, max_size=6))
def test_random_batches_match_reference(spec: FeatureSpec, batch: list[bytes]) -> None:
    assert_same(batch, spec, stored={"stored"})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(finite, st.integers(min_value=-(2**80), max_value=2**80)), min_size=4, max_size=4))
def test_number_conversion_matches_float(spec: FeatureSpec, numbers: list[float]) -> None:
    obj = record("n", values=tuple(numbers))
    assert_same([payload(obj), payload([obj, record("m", values=tuple(numbers))])], spec)


# -- the packed form: the field names once, then one array per record ----------------------


def packed(rows: list[Any], fields: Any = NAMES, **header: Any) -> bytes:
    return json.dumps({"schema_version": 1, "fields": list(fields), "rows": rows} | header).encode()


def as_row(obj: Any, fields: tuple[str, ...] = NAMES) -> Any:
    """The packed row of a record object (a feature it lacks is 0.5); other shapes pass unchanged."""
    if type(obj) is dict and type(obj.get("features")) is dict:
        return [obj.get("record_id"), obj.get("ts"), *(obj["features"].get(f, 0.5) for f in fields)]
    return obj


def test_packed_payload_means_the_same_records(spec: FeatureSpec) -> None:
    objs = [record("p1"), record("p2", values=(1.0, 2.0, 3.0, 4.0), ts=9)]
    reordered = ("amount", "c", "a", "b")
    want = clean_payload(payload(objs), spec, set())
    for fields in (NAMES, reordered):
        got = clean_payload(packed([as_row(o, fields) for o in objs], fields), spec, set())
        assert bits(got.accepted) == bits(want.accepted)
        assert not got.quarantined
        batch = clean_payloads([packed([as_row(o, fields) for o in objs], fields)], spec)
        assert bits(batch.accepted.records()) == bits(want.accepted)
        assert not batch.quarantined


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (packed([], NAMES), "empty record array"),
        (packed([as_row(record("x"))], NAMES, extra=1), "packed payload: unknown keys: 'extra'"),
        (json.dumps({"schema_version": 1, "rows": [[1]]}).encode(), "packed payload: missing keys: 'fields'"),
        (packed([as_row(record("x"))], NAMES, schema_version=2), "packed payload: unsupported schema_version 2"),
        (packed([as_row(record("x"))], ["a", 1, "c", "amount"]), "fields is not an array of strings"),
        (packed([as_row(record("x"))], ["a", "a", "c", "amount"]), "a field is named twice"),
        (json.dumps({"schema_version": 1, "fields": list(NAMES), "rows": {"r": 1}}).encode(), "rows is not a JSON"),
    ],
)
def test_packed_header_errors_quarantine_the_payload(spec: FeatureSpec, body: bytes, reason: str) -> None:
    result = clean_payload(body, spec, set())
    assert not result.accepted
    [q] = result.quarantined
    assert reason in q.reason
    assert q.raw == body
    assert q.record_id is None
    assert_same([body, payload(record("after"))], spec)


def test_packed_bad_rows_quarantined_beside_good_ones(spec: FeatureSpec) -> None:
    rows = [as_row(record("ok")), "row", [1, 2], as_row(with_value("high", "a", 11.0)), as_row(record("ok"))]
    result = clean_payload(packed(rows), spec, set())
    assert [r.record_id for r in result.accepted] == ["ok"]
    reasons = [(q.record_id, q.reason) for q in result.quarantined]
    assert reasons == [
        (None, "packed row is not a JSON array but string"),
        (None, "packed row has 2 values, expected 6 (record_id, ts, then one per field)"),
        ("high", "feature 'a': 11.0 outside [-10.0, 10.0]"),
        ("ok", "duplicate record_id 'ok'"),
    ]
    assert result.quarantined[1].raw == b"[1,2]"
    assert json.loads(result.quarantined[2].raw)["features"]["a"] == 11.0  # kept as the record it stands for
    assert_same([packed(rows)], spec)


def test_packed_adversarial_rows_match_reference(spec: FeatureSpec) -> None:
    rows = [as_row(obj) for obj in ADVERSARIAL]
    assert_same([packed(rows)], spec, stored={"stored"})
    assert_same([packed(rows, ("b", "amount", "a", "c"))], spec, stored={"stored"})
    assert_same([packed(rows, ("a", "b", "c", "zzz"))], spec)  # fields other than the spec's


@st.composite
def packed_payloads(draw: st.DrawFn) -> bytes:
    fields = draw(st.sampled_from([NAMES, ("c", "a", "amount", "b"), ("a", "b", "c"), ("a", "b", "c", "amount", "x")]))
    rows = [as_row(obj, fields) for obj in draw(st.lists(records(), min_size=0, max_size=8))]
    if draw(st.integers(0, 9)) == 0:
        rows.append(draw(st.sampled_from([[], ["r1"], "x", None, [["r1", 1.0]]])))
    header: dict[str, Any] = {}
    if draw(st.integers(0, 14)) == 0:
        header = draw(st.sampled_from([{"schema_version": 2}, {"extra": 1}]))
    if draw(st.integers(0, 14)) == 0:
        fields = ("a", "a", "c", "amount")  # a field named twice
    return packed(rows, fields, **header)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(payloads(), packed_payloads()), min_size=1, max_size=6))
def test_random_packed_and_record_batches_match_reference(spec: FeatureSpec, batch: list[bytes]) -> None:
    assert_same(batch, spec, stored={"stored"})


# -- booleans among numbers only: numpy infers a numeric array and reads true/false as 1/0 -----

NUMBERS_AND_BOOLEANS: list[Any] = [
    record("ok-1"),
    with_value("true", "c", True),
    with_value("false", "a", False),
    with_value("true-amount", "amount", True),
    with_value("int-one", "a", 1),
    with_value("int-zero", "b", 0),
    with_value("float-one", "c", 1.0),
    record("zeros", values=(0.0, 0.0, 0.0, 0.0)),
    record("ok-2"),
]


def test_booleans_among_numbers_only_go_to_the_reference(spec: FeatureSpec) -> None:
    """No null or string in the batch: the rows holding a 0 or a 1 are checked for a boolean,
    and only the booleans are refused, with the reference's reason."""
    got = clean_payloads([payload(NUMBERS_AND_BOOLEANS)], spec)
    assert [q.record_id for q in got.quarantined] == ["true", "false", "true-amount"]
    assert all("bool" in q.reason for q in got.quarantined)
    assert got.accepted.record_ids == ["ok-1", "int-one", "int-zero", "float-one", "zeros", "ok-2"]
    assert_same([payload(NUMBERS_AND_BOOLEANS)], spec)
    assert_same([payload(obj) for obj in NUMBERS_AND_BOOLEANS], spec)


def test_packed_booleans_among_numbers_only_go_to_the_reference(spec: FeatureSpec) -> None:
    rows = [as_row(obj) for obj in NUMBERS_AND_BOOLEANS]
    got = clean_payloads([packed(rows)], spec)
    assert [q.record_id for q in got.quarantined] == ["true", "false", "true-amount"]
    assert_same([packed(rows)], spec)
    assert_same([packed(rows, ("b", "amount", "a", "c"))], spec)
