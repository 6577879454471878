"""Device statuses through the real FleetMonitor worker into the real SQL stores (SQLite, PostgreSQL).

A status the stores cannot hold is refused as malformed before any write; a store that still
refuses part of a valid status costs only that part, counted with its reason. Only the MQTT
client is replaced: messages are handed to the monitor's paho callback directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from server.mqtt.fleet_monitor import FleetMonitor
from server.registry.migrate import migrate
from server.registry.sql import SqlRegistry
from server.registry.telemetry_sql import SqlTelemetryStore
from server.telemetry.ingest import TelemetryWriteError, record_status
from shared import topics
from shared.schemas import DeviceStatus, QuarantineSample

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


class _NoBroker:
    """The monitor subscribes at start and unsubscribes at stop; nothing else is used here."""

    def subscribe(self, *_args: object, **_kwargs: object) -> None:
        return None

    def unsubscribe(self, *_args: object, **_kwargs: object) -> None:
        return None


@dataclass
class World:
    backend: str
    registry: SqlRegistry
    telemetry: SqlTelemetryStore
    monitor: FleetMonitor

    def publish(self, device: str, payload: bytes) -> None:
        self.monitor._on_status(topics.status("default", device), payload, False)
        assert self.monitor.drain(10)


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "clean_postgres")
    migrate(url)
    registry = SqlRegistry(url)
    telemetry = SqlTelemetryStore(registry.engine)
    monitor = FleetMonitor(_NoBroker(), registry, "default", "fraud", telemetry)  # type: ignore[arg-type]
    monitor.start()
    yield World(request.param, registry, telemetry, monitor)
    monitor.stop()
    registry.close()


def _status(device: str, **extra: object) -> bytes:
    base = {"device_id": device, "fleet": "default", "kind": "heartbeat", "ts": time.time()}
    return json.dumps({**base, **extra}).encode()  # NaN / Infinity go out as JSON literals


UNSTORABLE: dict[str, dict[str, object]] = {
    "d-version": {"model_version": 2**32},
    "d-pinned": {"pinned_version": 2**31},
    "d-queue": {"queue_depth": 2**31},
    "d-nanrej": {"last_rejection": {"version": 1, "reason": "x", "at": float("nan")}},
    "d-feature": {"drift": {"score": 0.5, "window": 3, "worst_feature": "F" * 200, "worst_shift": 1.0}},
    "d-qsample": {"recent_quarantine": [{"at": float("nan"), "record_id": "r1", "reason": "bad"}]},
    "d-latency": {"scoring_latency_ms_p50": float("inf")},
    "d-drift": {"drift": {"score": float("inf"), "window": 5, "worst_feature": "V1", "worst_shift": float("-inf")}},
}


def test_unstorable_statuses_are_counted_as_malformed_before_any_write(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server.mqtt.fleet_monitor")
    world.publish("edge-1", _status("edge-1", counters={"ingested": 10}))
    for device, extra in UNSTORABLE.items():
        world.publish(device, _status(device, **extra))
    stats = world.monitor.stats
    assert (stats.statuses, stats.malformed, stats.store_errors) == (1, len(UNSTORABLE), 0)
    for device in UNSTORABLE:
        assert world.registry.get_device(device) is None, device
        assert world.telemetry.latest_points(device, 5) == []
    assert "model_version: Input should be less than or equal to 2147483647" in caplog.text
    assert "drift.worst_feature: String should have at most 128 characters" in caplog.text
    assert "scoring_latency_ms_p50: Input should be a finite number" in caplog.text
    # the good device, before and after the bad ones, is followed as usual
    world.publish("edge-1", _status("edge-1", counters={"ingested": 20}))
    record = world.registry.get_device("edge-1")
    assert record is not None
    assert record.counters["ingested"] == 20
    assert len(world.telemetry.latest_points("edge-1", 5)) == 2


def test_a_nul_in_a_quarantine_sample_costs_no_point_nor_sample(world: World) -> None:
    """The agent quarantines a record whose id holds a NUL and repeats the sample in each heartbeat."""
    sample = {"at": time.time(), "record_id": "evil\x00id", "reason": "V1: not a number", "excerpt": "{\x00"}
    for i in range(3):
        world.publish("edge-9", _status("edge-9", counters={"ingested": 100 * (i + 1)}, recent_quarantine=[sample]))
    assert world.monitor.stats.statuses == 3
    assert world.monitor.stats.store_errors == 0
    device = world.registry.get_device("edge-9")
    assert device is not None
    assert device.counters["ingested"] == 300
    assert [p.ingested for p in world.telemetry.latest_points("edge-9", 10)] == [100, 200, 300]
    [kept] = world.telemetry.list_quarantine("edge-9", 10)
    assert (kept.record_id, kept.excerpt) == ("evil\ufffdid", "{\ufffd")


def test_a_long_lived_agents_counts_past_2_31_are_stored(world: World) -> None:
    """Cumulative counts pass 2**31 after 24 days at 1,000 records/s: 64-bit columns on both
    backends (migration 0007), so the point, the device row and the samples are all kept."""
    sample = {"at": time.time(), "record_id": "tx-1", "reason": "V1: not a number"}
    world.publish("edge-7", _status("edge-7", counters={"ingested": 2**40}, recent_quarantine=[sample]))
    device = world.registry.get_device("edge-7")
    assert device is not None
    assert device.counters["ingested"] == 2**40
    assert [s.record_id for s in world.telemetry.list_quarantine("edge-7", 10)] == ["tx-1"]
    assert [p.ingested for p in world.telemetry.latest_points("edge-7", 5)] == [2**40]
    assert (world.monitor.stats.statuses, world.monitor.stats.store_errors) == (1, 0)


@pytest.mark.integration
def test_samples_the_store_refuses_do_not_cost_the_point(clean_postgres: str) -> None:
    """The store, not the schema, refuses the samples here (built without validation, as a
    status stored by an older server could hold them): the point is written all the same."""
    migrate(clean_postgres)
    registry = SqlRegistry(clean_postgres)
    store = SqlTelemetryStore(registry.engine)
    try:
        unchecked = QuarantineSample.model_construct(at=1.0, record_id="evil\x00id", reason="bad", excerpt="")
        status = DeviceStatus(
            device_id="edge-9", fleet="default", kind="heartbeat", ts=time.time(), recent_quarantine=(unchecked,)
        )
        with pytest.raises(TelemetryWriteError, match=r"quarantine samples: DataError: .*NUL") as caught:
            record_status(store, status, time.time(), retained=False)
        assert len(caught.value.failures) == 1
        assert len(store.latest_points("edge-9", 5)) == 1
        assert store.list_quarantine("edge-9", 5) == []
    finally:
        registry.close()
