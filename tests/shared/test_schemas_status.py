"""DeviceStatus and its parts: what the server can store and stream passes, anything else is refused.

A value the database or the browser's JSON cannot hold must fail validation (the fleet
monitor then counts the status as malformed) instead of failing a write after acceptance.
"""

from __future__ import annotations

import json
import time

import pytest

from shared.errors import PayloadError
from shared.schemas import INT32_MAX, Counters, DeviceStatus, Drift, QuarantineSample, Rejection, decode


def _status(**extra: object) -> bytes:
    base: dict[str, object] = {"device_id": "edge-1", "fleet": "default", "kind": "heartbeat", "ts": time.time()}
    return json.dumps({**base, **extra}).encode()


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"scoring_latency_ms_p50": float("inf")}, "scoring_latency_ms_p50"),
        ({"scoring_latency_ms_p50": float("nan")}, "scoring_latency_ms_p50"),
        ({"drift": {"score": float("inf"), "window": 5}}, "drift.score"),
        (
            {"drift": {"score": 0.5, "window": 5, "worst_feature": "V1", "worst_shift": float("-inf")}},
            "drift.worst_shift",
        ),
        ({"last_rejection": {"version": 1, "reason": "x", "at": float("nan")}}, "last_rejection.at"),
        ({"recent_quarantine": [{"at": float("nan"), "reason": "bad"}]}, "recent_quarantine.0.at"),
    ],
)
def test_non_finite_floats_are_refused(extra: dict[str, object], where: str) -> None:
    # json.dumps writes NaN / Infinity literals, as a careless or hostile agent would
    with pytest.raises(PayloadError, match=rf"{where}: Input should be a finite number"):
        decode(DeviceStatus, _status(**extra))


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"model_version": 2**32}, "model_version"),
        ({"pinned_version": INT32_MAX + 1}, "pinned_version"),
        ({"queue_depth": 2**31}, "queue_depth"),
        ({"outbox_depth": 2**31}, "outbox_depth"),
        ({"counters": {"ingested": -1}}, "counters.ingested"),
        ({"counters": {"scored": 2**63}}, "counters.scored"),
        ({"last_rejection": {"version": 2**31, "reason": "x", "at": 1.0}}, "last_rejection.version"),
        ({"drift": {"score": 0.5, "window": 3, "worst_feature": "F" * 129}}, "drift.worst_feature"),
        ({"drift": {"score": -0.1, "window": 3}}, "drift.score"),
    ],
)
def test_values_the_registry_columns_cannot_hold_are_refused(extra: dict[str, object], where: str) -> None:
    with pytest.raises(PayloadError, match=rf"invalid DeviceStatus: {where}: "):
        decode(DeviceStatus, _status(**extra))


def test_the_largest_storable_values_still_validate() -> None:
    status = decode(
        DeviceStatus,
        _status(
            model_version=INT32_MAX,
            pinned_version=INT32_MAX,
            queue_depth=INT32_MAX,
            # a long-lived agent's cumulative counters may pass 2**31: they must not be refused
            counters={"ingested": 2**40, "quarantined": 2**33, "scored": 2**40},
            drift={"score": 0.0, "window": 0, "worst_feature": "F" * 128, "worst_shift": -3.5},
            scoring_latency_ms_p50=0.0,
        ),
    )
    assert status.counters.ingested == 2**40
    assert status.drift is not None
    assert len(status.drift.worst_feature or "") == 128


def test_nul_in_reported_text_is_replaced_not_refused() -> None:
    """A record with a NUL in its id is exactly what quarantine exists for: its sample must
    still be reported, but PostgreSQL text cannot hold NUL."""
    sample = QuarantineSample(at=1.0, record_id="evil\x00id", reason="bad\x00", excerpt='{"x": "\x00"}')
    assert (sample.record_id, sample.reason, sample.excerpt) == ("evil\ufffdid", "bad\ufffd", '{"x": "\ufffd"}')
    assert Rejection(version=1, reason="sha\x00", at=1.0).reason == "sha\ufffd"
    assert Drift(score=0.1, window=1, worst_feature="V\x001").worst_feature == "V\ufffd1"
    # through the wire too, and the replacement keeps the length bound
    decoded = decode(DeviceStatus, _status(recent_quarantine=[{"at": 1.0, "record_id": "\x00" * 128, "reason": "r"}]))
    assert decoded.recent_quarantine[0].record_id == "\ufffd" * 128


def test_an_agent_status_round_trips() -> None:
    """What edge_agent/service.py builds: every field set to a legitimate value."""
    now = time.time()
    status = DeviceStatus(
        device_id="edge-1",
        fleet="default",
        kind="heartbeat",
        ts=now,
        seq=7,
        model_version=3,
        pinned_version=None,
        signature_verified=True,
        counters=Counters(ingested=1000, quarantined=3, scored=997, labelled=10, trained=500, models_rejected=1),
        queue_depth=0,
        outbox_depth=2,
        scoring_latency_ms_p50=0.42,
        last_rejection=Rejection(version=4, reason="sha256 mismatch", at=now),
        drift=Drift(score=0.12, window=1000, worst_feature="Amount", worst_shift=0.5),
        recent_quarantine=(QuarantineSample(at=now, record_id="tx-1", reason="V1: not a number", excerpt="{"),),
    )
    assert decode(DeviceStatus, status.to_bytes()) == status
