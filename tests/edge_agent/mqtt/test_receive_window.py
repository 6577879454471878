"""The agent's receive window (MQTT 5 Receive Maximum) bounds the broker, never what arrives."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from edge_agent.mqtt import AgentLink
from edge_agent.mqtt.link import RECEIVE_MAXIMUM
from edge_agent.updater import Complete, ModelUpdater, StartDownload
from server.release.publisher import publish_release
from shared import topics
from shared.bundle import build_manifest
from shared.errors import ConfigError
from shared.mqtt import BrokerAddress, MqttClient
from shared.signing import TrustStore, generate_private_key
from shared.tasks.fraud_spec import INPUT_NAME, OUTPUT_NAME, TASK, base_feature_spec
from simulations.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded_url() -> Iterator[str]:
    broker = EmbeddedBroker().start()
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture(params=["mosquitto", "embedded"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Both brokers fedforge runs on must honour the window (MQTT 5 Receive Maximum)."""
    if request.param == "mosquitto":
        return str(request.getfixturevalue("mosquitto").url)
    return str(request.getfixturevalue("embedded_url"))


def test_a_window_of_one_still_delivers_every_qos1_message_in_order(broker_url: str) -> None:
    url = broker_url
    topic = f"t/{uuid.uuid4().hex[:8]}"
    got: list[bytes] = []
    all_in = threading.Event()
    receiver = MqttClient(BrokerAddress.parse(url), f"r-{uuid.uuid4().hex[:8]}", persistent=False, receive_maximum=1)

    def on_message(t: str, payload: bytes, retained: bool) -> None:
        got.append(payload)
        if len(got) == 200:
            all_in.set()

    receiver.subscribe(topic, on_message)
    receiver.start()
    sender = MqttClient(BrokerAddress.parse(url), f"s-{uuid.uuid4().hex[:8]}", persistent=False)
    sender.start()
    try:
        time.sleep(0.2)  # let the subscription reach the broker before the burst
        for i in range(200):
            sender.publish(topic, str(i).encode(), qos=1)
        assert all_in.wait(30)
        assert got == [str(i).encode() for i in range(200)]
    finally:
        sender.stop()
        receiver.stop()


def test_a_retained_release_burst_completes_through_the_agents_link(broker_url: str) -> None:
    """Every retained chunk arrives at once on subscribe: the window paces it, the updater completes."""
    url = broker_url
    fleet = f"f{uuid.uuid4().hex[:8]}"
    key = generate_private_key()
    # 48 chunks, three windows' worth. (The embedded broker, rumqttd, was seen to drop one
    # of 100 retained chunks on a wildcard subscribe, window or not; the resume path covers it.)
    model = bytes(range(256)) * 192
    manifest = build_manifest(
        model_bytes=model,
        task=TASK,
        version=1,
        feature_spec=base_feature_spec(),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        signing_key=key,
        chunk_size=1024,
    )
    assert manifest.chunk_count >= 3 * RECEIVE_MAXIMUM
    publisher = MqttClient(BrokerAddress.parse(url), f"p-{uuid.uuid4().hex[:8]}", persistent=False)
    publisher.start()
    publish_release(publisher, fleet, manifest, model)
    link = AgentLink(url, fleet, f"d{uuid.uuid4().hex[:6]}", TASK)
    updater = ModelUpdater(fleet, TASK, TrustStore([key.public_key()]))
    done: list[Complete] = []
    finished = threading.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        if topic == link.manifest_topic:
            action = updater.on_manifest(payload)
            if isinstance(action, StartDownload):
                link.subscribe(action.subscribe, on_message)
            return
        parsed = topics.parse(topic)
        if parsed.kind == "chunk" and parsed.version is not None and parsed.index is not None:
            result = updater.on_chunk(parsed.version, parsed.index, payload)
            if isinstance(result, Complete):
                done.append(result)
                finished.set()

    link.start(on_message)
    try:
        assert finished.wait(30)
        assert done[0].model_bytes == model
    finally:
        link.stop()
        publisher.stop()


@pytest.mark.parametrize("value", [0, 65536])
def test_an_impossible_window_is_a_configuration_error(value: int) -> None:
    with pytest.raises(ConfigError, match="receive_maximum"):
        MqttClient(BrokerAddress.parse("mqtt://127.0.0.1:1"), "x", receive_maximum=value)
