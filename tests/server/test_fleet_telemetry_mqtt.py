"""Device statuses over a real Mosquitto become telemetry history through the fleet monitor."""

from __future__ import annotations

import time
import uuid

import pytest

from server.mqtt.fleet_monitor import FleetMonitor, server_client
from server.registry import InMemoryRegistry
from server.registry.telemetry import InMemoryTelemetryStore
from server.telemetry.points import rates
from shared import topics
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import Counters, DeviceStatus, Drift, QuarantineSample
from tests.server.test_fleet_mqtt import wait_for

pytestmark = pytest.mark.integration


def test_each_status_is_a_point_and_quarantine_samples_are_kept(mosquitto: object) -> None:
    fleet = f"f{uuid.uuid4().hex[:8]}"
    registry, telemetry = InMemoryRegistry(), InMemoryTelemetryStore()
    client = server_client(mosquitto.url, fleet)  # type: ignore[attr-defined]
    monitor = FleetMonitor(client, registry, fleet, "fraud", telemetry=telemetry)
    agent = MqttClient(BrokerAddress.parse(mosquitto.url), f"a-{uuid.uuid4().hex[:8]}", persistent=False)  # type: ignore[attr-defined]
    monitor.start()
    client.start()
    agent.start()
    try:
        for i in range(3):
            status = DeviceStatus(
                device_id="edge-1",
                fleet=fleet,
                kind="heartbeat",
                ts=time.time(),
                seq=i,
                model_version=1,
                counters=Counters(ingested=100 * i, quarantined=i),
                drift=Drift(score=0.2, window=100 * i),
                recent_quarantine=tuple(
                    QuarantineSample(at=1000.0 + k, record_id=f"r{k}", reason="out of range") for k in range(i + 1)
                ),
            )
            agent.publish_and_wait(topics.status(fleet, "edge-1"), status.to_bytes(), retain=True)
            time.sleep(0.05)  # distinct receive times: each status is its own interval
        assert wait_for(lambda: len(telemetry.list_points("edge-1")) == 3)
        points = telemetry.list_points("edge-1")
        assert [p.ingested for p in points] == [0, 100, 200]
        assert all(p.drift_score == 0.2 for p in points)
        assert rates(points).quarantine_rate == pytest.approx(2 / 202)
        assert [q.record_id for q in telemetry.list_quarantine("edge-1")] == ["r2", "r1", "r0"]
    finally:
        agent.stop()
        monitor.stop()
        client.stop()
