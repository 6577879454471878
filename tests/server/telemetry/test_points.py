"""Rates from cumulative counters, and the chart series built from them."""

from __future__ import annotations

import pytest

from server.telemetry.points import TelemetryPoint, point_from_status, rates, series
from shared.schemas import Counters, DeviceStatus, Drift


def _p(at: float, ingested: int, quarantined: int = 0, **kw: object) -> TelemetryPoint:
    return TelemetryPoint("d1", at, ingested, quarantined, ingested, **kw)  # type: ignore[arg-type]


def test_records_per_s_counts_accepted_and_quarantined_records() -> None:
    r = rates([_p(0, 0), _p(10, 90, 10)])
    assert r.records_per_s == pytest.approx(10.0)
    assert r.quarantine_rate == pytest.approx(0.1)
    assert r.span_s == 10


def test_rates_average_over_the_whole_window() -> None:
    r = rates([_p(0, 0), _p(5, 100), _p(15, 100), _p(20, 300)])
    assert r.records_per_s == pytest.approx(300 / 20)
    assert r.quarantine_rate == 0.0


def test_a_counter_reset_skips_only_that_interval() -> None:
    # The agent restarted on a fresh store between t=10 and t=20: its counters went down.
    r = rates([_p(0, 0), _p(10, 100), _p(20, 5), _p(30, 105)])
    assert r.records_per_s == pytest.approx(200 / 20)
    assert r.span_s == 20


def test_no_rate_from_a_single_point_or_no_traffic() -> None:
    assert rates([_p(0, 10)]).records_per_s is None
    idle = rates([_p(0, 10), _p(10, 10)])
    assert idle.records_per_s == 0.0
    assert idle.quarantine_rate is None  # nothing arrived: the share is undefined, not 0


def test_series_has_one_row_per_interval() -> None:
    rows = series([_p(0, 0, drift_score=0.1), _p(2, 20, 2, drift_score=0.2, serving_version=3, drift_feature="V2")])
    assert rows == [
        {
            "at": 2,
            "records_per_s": pytest.approx(11.0),
            "quarantine_rate": pytest.approx(2 / 22),
            "scoring_latency_ms": None,
            "drift_score": 0.2,
            "drift_feature": "V2",
            "queue_depth": 0,
            "serving_version": 3,
        }
    ]


def test_point_from_status_keeps_counters_and_drift() -> None:
    status = DeviceStatus(
        device_id="d9",
        fleet="f",
        kind="heartbeat",
        ts=5.0,
        model_version=2,
        counters=Counters(ingested=7, quarantined=1, scored=6),
        scoring_latency_ms_p50=0.01,
        drift=Drift(score=0.3, window=7, worst_feature="V1", worst_shift=0.9),
    )
    p = point_from_status(status, 9.0)
    assert (p.device_id, p.at, p.ingested, p.quarantined, p.scored) == ("d9", 9.0, 7, 1, 6)
    assert (p.serving_version, p.scoring_latency_ms, p.drift_score) == (2, 0.01, 0.3)
    assert (p.drift_feature, p.drift_shift) == ("V1", 0.9)
