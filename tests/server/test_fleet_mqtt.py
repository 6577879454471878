"""Fleet monitor and release publishing against a real Mosquitto."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.mqtt.fleet_monitor import FleetMonitor, server_client
from server.registry import InMemoryRegistry
from server.release.publisher import clear_release, publish_release
from server.release.release import release_model
from server.training.bootstrap import train_bootstrap_model
from server.training.data import model_inputs
from shared import topics
from shared.bundle import ChunkAssembler, parse_manifest, verify_manifest
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import ChunkRequest, DeviceStatus, ModelManifest
from shared.signing import TrustStore

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll for an outcome; the timeout only bounds a failing test, it asserts nothing about speed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def fleet() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


@pytest.fixture
def plain_client(mosquitto: object) -> Iterator[MqttClient]:
    client = MqttClient(BrokerAddress.parse(mosquitto.url), f"t-{uuid.uuid4().hex[:8]}", persistent=False)  # type: ignore[attr-defined]
    client.start()
    yield client
    client.stop()


@pytest.fixture
def monitor(mosquitto: object, fleet: str) -> Iterator[tuple[FleetMonitor, InMemoryRegistry]]:
    registry = InMemoryRegistry()
    client = server_client(mosquitto.url, fleet)  # type: ignore[attr-defined]
    mon = FleetMonitor(client, registry, fleet, "fraud")
    mon.start()
    client.start()
    yield mon, registry
    mon.stop()
    client.stop()


class Receiver:
    """A plain subscriber that collects one release: manifest + its chunks."""

    def __init__(self, client: MqttClient, fleet: str, task: str = "fraud") -> None:
        self.client, self.fleet, self.task = client, fleet, task
        self.manifest: ModelManifest | None = None
        self.chunks: dict[tuple[int, int], bytes] = {}
        self.lock = threading.Lock()
        client.subscribe(topics.manifest(fleet, task), self._on_manifest)

    def _on_manifest(self, topic: str, payload: bytes, retained: bool) -> None:
        self.manifest = parse_manifest(payload)
        self.client.subscribe(topics.chunks_filter(self.fleet, self.task, self.manifest.version), self._on_chunk)

    def _on_chunk(self, topic: str, payload: bytes, retained: bool) -> None:
        parsed = topics.parse(topic)
        assert parsed.version is not None
        assert parsed.index is not None
        with self.lock:
            self.chunks[(parsed.version, parsed.index)] = payload

    def count(self, version: int) -> int:
        with self.lock:
            return sum(1 for v, _ in self.chunks if v == version)

    def assembler(self) -> ChunkAssembler:
        assert self.manifest is not None
        asm = ChunkAssembler(self.manifest)
        with self.lock:
            for (v, i), data in self.chunks.items():
                if v == self.manifest.version:
                    asm.add(i, data)
        return asm


def test_status_messages_reach_the_registry_and_bad_ones_are_counted(
    monitor: tuple[FleetMonitor, InMemoryRegistry], plain_client: MqttClient, fleet: str
) -> None:
    mon, registry = monitor
    status = DeviceStatus(
        device_id="edge-1", fleet=fleet, kind="birth", ts=time.time(), model_version=3, scoring_latency_ms_p50=0.02
    )
    plain_client.publish_and_wait(topics.status(fleet, "edge-1"), b"{not json", retain=False)
    plain_client.publish_and_wait(topics.status(fleet, "edge-2"), status.to_bytes(), retain=False)  # wrong topic
    plain_client.publish_and_wait(topics.status(fleet, "edge-1"), status.to_bytes(), retain=True)
    assert wait_for(lambda: registry.get_device("edge-1") is not None)
    assert wait_for(lambda: mon.stats.malformed == 2)
    device = registry.get_device("edge-1")
    assert device is not None
    assert (device.serving_version, device.status) == (3, "birth")
    assert device.scoring_latency_ms_p50 == 0.02
    assert registry.get_device("edge-2") is None
    offline = status.model_copy(update={"kind": "offline", "ts": time.time()})
    plain_client.publish_and_wait(topics.status(fleet, "edge-1"), offline.to_bytes(), retain=True)
    assert wait_for(lambda: getattr(registry.get_device("edge-1"), "status", None) == "offline")
    plain_client.publish_and_wait(topics.status(fleet, "edge-1"), b"", retain=True)  # clear retained


def test_release_is_received_assembled_and_verified(
    monitor: tuple[FleetMonitor, InMemoryRegistry],
    plain_client: MqttClient,
    fleet: str,
    bootstrap_df: pd.DataFrame,
    holdout_df: pd.DataFrame,
    signing_key: Ed25519PrivateKey,
) -> None:
    mon, registry = monitor
    model, spec, metrics = train_bootstrap_model(bootstrap_df, holdout_df, epochs=1, seed=0)
    manifest = release_model(
        registry,
        mon.client,
        signing_key,
        model,
        spec,
        metrics,
        None,
        "bootstrap",
        model_inputs(spec, holdout_df),
        fleet=fleet,
        chunk_size=1024,
    )
    assert manifest.chunk_count > 2
    # Subscribing after the release: everything must be retained.
    receiver = Receiver(plain_client, fleet)
    assert wait_for(lambda: receiver.manifest is not None and receiver.count(1) == manifest.chunk_count)
    assert receiver.manifest == manifest
    verify_manifest(receiver.manifest, TrustStore([signing_key.public_key()]))
    assert receiver.assembler().assemble() == registry.get_artifact("fraud", 1)

    # An agent that lost chunks asks for them again, and gets exactly those re-sent.
    with receiver.lock:
        receiver.chunks.clear()
    request = ChunkRequest(
        device_id="edge-9", task="fraud", version=1, missing=((0, 1), (manifest.chunk_count - 1, 99))
    )
    plain_client.publish_and_wait(topics.model_request(fleet, "edge-9"), request.to_bytes())
    assert wait_for(lambda: receiver.count(1) == 3)
    assert wait_for(lambda: mon.stats.chunk_requests == 1)
    with receiver.lock:
        assert sorted(i for _, i in receiver.chunks) == [0, 1, manifest.chunk_count - 1]

    # Requests for unknown versions or garbage are ignored without harm.
    bad = ChunkRequest(device_id="edge-9", task="fraud", version=42, missing=((0, 0),))
    plain_client.publish_and_wait(topics.model_request(fleet, "edge-9"), bad.to_bytes())
    plain_client.publish_and_wait(topics.model_request(fleet, "edge-9"), b"\xff\x00")
    assert wait_for(lambda: mon.stats.malformed == 1)
    assert mon.drain()
    assert mon.stats.chunk_requests == 1


def test_publish_release_then_clear_removes_retained_chunks(
    plain_client: MqttClient, mosquitto: object, fleet: str, signing_key: Ed25519PrivateKey
) -> None:
    from shared.bundle import build_manifest
    from shared.tasks.fraud import base_feature_spec

    data = bytes(range(256)) * 20
    manifest = build_manifest(
        model_bytes=data,
        task="fraud",
        version=5,
        feature_spec=base_feature_spec(),
        input_name="features",
        output_name="score",
        signing_key=signing_key,
        chunk_size=1024,
    )
    publish_release(plain_client, fleet, manifest, data)
    clear_release(plain_client, fleet, "fraud", 5, manifest.chunk_count)
    late = MqttClient(BrokerAddress.parse(mosquitto.url), f"late-{uuid.uuid4().hex[:6]}", persistent=False)  # type: ignore[attr-defined]
    late.start()
    try:
        receiver = Receiver(late, fleet)
        assert wait_for(lambda: receiver.manifest is not None)
        # The manifest is still retained; the cleared chunks are not. A marker published after
        # the subscription proves the broker had time to deliver any retained chunk.
        marker = threading.Event()
        late.subscribe(topics.chunk(fleet, "fraud", 5, 999), lambda t, p, r: marker.set())
        plain_client.publish_and_wait(topics.chunk(fleet, "fraud", 5, 999), b"x")
        assert marker.wait(10)
        assert receiver.count(5) == 1  # only the marker
    finally:
        late.stop()


def test_acks_are_stored_and_a_revoked_device_is_no_longer_followed(
    monitor: tuple[FleetMonitor, InMemoryRegistry], plain_client: MqttClient, fleet: str
) -> None:
    from shared.schemas import CommandAck

    mon, registry = monitor

    def status(version: int) -> bytes:
        return DeviceStatus(
            device_id="edge-1", fleet=fleet, kind="heartbeat", ts=time.time(), model_version=version
        ).to_bytes()

    def ack(command_id: str, device: str = "edge-1") -> bytes:
        return CommandAck(
            command_id=command_id, device_id=device, kind="rollback", accepted=True, serving_version=1, ts=time.time()
        ).to_bytes()

    plain_client.publish_and_wait(topics.status(fleet, "edge-1"), status(2))
    plain_client.publish_and_wait(topics.acks(fleet, "edge-1"), ack("c1"))
    plain_client.publish_and_wait(topics.acks(fleet, "edge-2"), ack("c1"))  # an ack on another device's topic
    assert wait_for(lambda: [a.device_id for a in registry.list_acks("c1")] == ["edge-1"])
    assert wait_for(lambda: mon.stats.malformed == 1)
    registry.set_device_revoked("edge-1", True)
    plain_client.publish_and_wait(topics.status(fleet, "edge-1"), status(7))
    plain_client.publish_and_wait(topics.acks(fleet, "edge-1"), ack("c2"))
    assert wait_for(lambda: mon.stats.revoked_ignored == 2)
    device = registry.get_device("edge-1")
    assert device is not None
    assert device.serving_version == 2
    assert registry.list_acks("c2") == []
