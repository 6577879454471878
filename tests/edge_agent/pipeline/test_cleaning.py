"""Cleaning: every quarantine reason, and good records surviving beside bad ones."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_agent.pipeline import clean_payload
from shared.features import FeatureSpec
from shared.schemas import MAX_JSON_PAYLOAD_BYTES
from tests.edge_agent.agent_testlib import GOOD, NAMES, payload, record


def one(spec: FeatureSpec, obj: Any, seen: set[str] | None = None) -> str:
    result = clean_payload(obj if isinstance(obj, bytes) else payload(obj), spec, seen or set())
    assert result.accepted == []
    assert len(result.quarantined) == 1
    return result.quarantined[0].reason


def test_valid_record_kept_raw_in_spec_order(spec: FeatureSpec) -> None:
    result = clean_payload(payload(record("r1", ts=5)), spec, set())
    assert result.quarantined == []
    [rec] = result.accepted
    assert (rec.record_id, rec.ts, rec.values) == ("r1", 5.0, GOOD)
    assert spec.transform([rec.values]).shape == (1, spec.width)


def test_feature_order_follows_spec_not_json(spec: FeatureSpec) -> None:
    obj = record("r1")
    obj["features"] = dict(reversed(list(obj["features"].items())))
    [rec] = clean_payload(payload(obj), spec, set()).accepted
    assert rec.values == GOOD


def test_array_keeps_good_records_beside_bad(spec: FeatureSpec) -> None:
    bad = record("r2")
    bad["features"]["a"] = "x"
    result = clean_payload(payload([record("r1"), bad, record("r3")]), spec, set())
    assert [r.record_id for r in result.accepted] == ["r1", "r3"]
    [q] = result.quarantined
    assert q.record_id == "r2"
    assert "feature 'a'" in q.reason
    assert json.loads(q.raw) == bad


def with_feature(name: str, value: Any) -> dict[str, Any]:
    obj = record("r1")
    obj["features"][name] = value
    return obj


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (b"{not json", "broken JSON"),
        (b'{"schema_version": 1, "record_id": "x", "ts": NaN}', "non-standard JSON constant NaN"),
        (b"[1]", "record is not a JSON object but number"),
        (b'"hello"', "not a JSON object or array"),
        (b"[]", "empty record array"),
        (b"\xff\xfe", "broken JSON"),
        (record("r1", extra=1), "unknown keys: 'extra'"),
        ({k: v for k, v in record("r1").items() if k != "ts"}, "missing keys: 'ts'"),
        ({**record("r1"), "schema_version": 2}, "unsupported schema_version"),
        ({**record("r1"), "schema_version": True}, "unsupported schema_version"),
        ({**record("r1"), "record_id": 7}, "record_id: expected a string"),
        ({**record("r1"), "record_id": ""}, "record_id: length 0"),
        ({**record("r1"), "record_id": "x" * 129}, "record_id: length 129"),
        ({**record("r1"), "ts": "yesterday"}, "ts: expected a number, got string"),
        (payload(record("r1", ts=7.25)).replace(b"7.25", b"1e999"), "ts: not a finite number"),
        ({**record("r1"), "features": [1, 2]}, "features is not a JSON object"),
        (with_feature("zzz", 1.0), "unknown features: 'zzz'"),
        ({**record("r1"), "features": {n: 0.0 for n in NAMES[:-1]}}, "missing features: 'amount'"),
        (with_feature("a", "1.0"), "feature 'a': expected a number, got string"),
        (with_feature("a", None), "feature 'a': expected a number, got null"),
        (with_feature("a", True), "feature 'a': expected a number, got boolean"),
        (with_feature("a", [1]), "feature 'a': expected a number, got array"),
        (payload(record("r1")).replace(b"0.1", b"1e999"), "feature 'a': not a finite number"),
        (payload(record("r1")).replace(b"0.1", b"-1e999"), "feature 'a': not a finite number"),
        (with_feature("a", 10**400), "feature 'a': integer too large"),
        (with_feature("a", 10.5), "feature 'a': 10.5 outside [-10.0, 10.0]"),
        (with_feature("amount", -1), "feature 'amount': -1.0 outside"),
    ],
)
def test_each_reason(spec: FeatureSpec, obj: Any, reason: str) -> None:
    assert reason in one(spec, obj)


def test_nan_and_infinity_literals(spec: FeatureSpec) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        text = payload(record("r1")).decode().replace("0.1", literal)
        assert "non-standard JSON constant" in one(spec, text.encode())


def test_oversize_payload(spec: FeatureSpec) -> None:
    big = payload([record(f"r{i}") for i in range(MAX_JSON_PAYLOAD_BYTES // 50)])
    assert len(big) > MAX_JSON_PAYLOAD_BYTES
    assert "payload too large" in one(spec, big)


def test_duplicates_seen_before_and_within_payload(spec: FeatureSpec) -> None:
    assert "duplicate record_id 'old'" in one(spec, record("old"), seen={"old"})
    result = clean_payload(payload([record("r1"), record("r1")]), spec, lambda rid: False)
    assert [r.record_id for r in result.accepted] == ["r1"]
    assert [q.reason for q in result.quarantined] == ["duplicate record_id 'r1'"]


def test_integers_are_numbers(spec: FeatureSpec) -> None:
    [rec] = clean_payload(payload(record("r1", values=(1, 2, 3, 4), ts=3)), spec, set()).accepted
    assert rec.values == (1.0, 2.0, 3.0, 4.0)
    assert all(type(v) is float for v in rec.values)


def test_many_records_in_one_payload(spec: FeatureSpec) -> None:
    rng = np.random.default_rng(1)
    rows = [record(f"r{i}", values=(*rng.uniform(-1, 1, 3).tolist(), 5.0)) for i in range(1000)]
    result = clean_payload(payload(rows), spec, set())
    assert len(result.accepted) == 1000
    assert result.quarantined == []
