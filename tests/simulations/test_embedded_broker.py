"""The embedded broker gives the demo what it needs from MQTT 5, with the project's own client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import topics
from shared.bundle import split_chunks
from shared.mqtt import BrokerAddress, MqttClient
from simulations.broker import EmbeddedBroker, EmbeddedBrokerError, render_config

CHUNK_SIZE = 256 * 1024
WAIT_S = 20.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class Inbox:
    """What a subscriber received; the handler runs on paho's thread."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cv = threading.Condition()

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._cv:
            self.messages.append((topic, payload, retained))
            self._cv.notify_all()

    def wait_for(self, count: int) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: len(self.messages) >= count, WAIT_S)

    def wait_for_payload(self, payload: bytes) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: any(p == payload for _, p, _ in self.messages), WAIT_S)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def client(broker: EmbeddedBroker, name: str, *, persistent: bool = False) -> MqttClient:
    return MqttClient(BrokerAddress.parse(broker.url), name, persistent=persistent)


def prove_subscribed(sub: MqttClient, inbox: Inbox, topic: str) -> None:
    """A message the subscriber sends itself comes back only once its subscription is active."""
    probe = f"probe-{uuid.uuid4().hex}".encode()
    sub.publish_and_wait(topic, probe)
    assert inbox.wait_for_payload(probe)


def test_config_listens_on_loopback_with_room_for_chunks() -> None:
    config = render_config(18830)
    assert 'listen = "127.0.0.1:18830"' in config
    assert "[v5.1]" in config
    assert "[v4." not in config
    assert f"max_payload_size = {2 * 1024 * 1024}" in config


def test_config_rejects_a_bad_port() -> None:
    with pytest.raises(EmbeddedBrokerError):
        render_config(70000)


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(EmbeddedBrokerError):
        _ = EmbeddedBroker().url


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.mark.integration
def test_late_subscriber_gets_retained_manifest_and_chunks(broker: EmbeddedBroker) -> None:
    fleet, task, version = unique("fleet"), "fraud", 3
    model = os.urandom(5 * CHUNK_SIZE)
    chunks = split_chunks(model, CHUNK_SIZE)
    manifest = b'{"version": 3, "chunks": 5}'
    publisher = client(broker, unique("server"))
    publisher.start()
    try:
        for index, chunk in enumerate(chunks):
            publisher.publish_and_wait(topics.chunk(fleet, task, version, index), chunk, retain=True)
        publisher.publish_and_wait(topics.manifest(fleet, task), manifest, retain=True)
    finally:
        publisher.stop()

    inbox = Inbox()
    agent = client(broker, unique("agent"))
    agent.subscribe(topics.manifest(fleet, task), inbox)
    agent.subscribe(topics.chunks_filter(fleet, task, version), inbox)
    agent.start()
    try:
        assert inbox.wait_for(1 + len(chunks))
    finally:
        agent.stop()
    received = {topic: (payload, retained) for topic, payload, retained in inbox.messages}
    assert received[topics.manifest(fleet, task)] == (manifest, True)
    reassembled = b"".join(received[topics.chunk(fleet, task, version, i)][0] for i in range(len(chunks)))
    assert reassembled == model
    assert all(retained for _, retained in received.values())


@pytest.mark.integration
def test_persistent_session_queues_qos1_while_offline(broker: EmbeddedBroker) -> None:
    fleet, device = unique("fleet"), unique("dev")
    topic = topics.commands(fleet, device)
    first = Inbox()
    agent = client(broker, device, persistent=True)
    agent.subscribe(topic, first)
    agent.start()
    prove_subscribed(agent, first, topic)
    agent.stop()

    sent = [f"command-{i}".encode() for i in range(20)]
    server = client(broker, unique("server"))
    server.start()
    try:
        for payload in sent:
            server.publish_and_wait(topic, payload)
    finally:
        server.stop()

    later = Inbox()
    agent = client(broker, device, persistent=True)
    agent.subscribe(topic, later)
    agent.start()
    try:
        assert later.wait_for(len(sent))
    finally:
        agent.stop()
    assert [payload for _, payload, _ in later.messages[: len(sent)]] == sent


DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from shared.mqtt import BrokerAddress, MqttClient, Will
    url, device, topic = sys.argv[1:4]
    c = MqttClient(BrokerAddress.parse(url), device, keepalive=5, will=Will(topic, b"offline"))
    c.start()
    c.publish_and_wait(topic, b"online", retain=True)
    print("up", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.integration
def test_will_is_published_when_a_device_dies(broker: EmbeddedBroker) -> None:
    fleet, device = unique("fleet"), unique("dev")
    topic = topics.status(fleet, device)
    inbox = Inbox()
    watcher = client(broker, unique("server"))
    watcher.subscribe(topic, inbox)
    watcher.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", DEVICE_SCRIPT, broker.url, device, topic],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"up"
            assert inbox.wait_for_payload(b"online")
        finally:
            proc.kill()
            proc.wait()
        assert inbox.wait_for_payload(b"offline")
    finally:
        watcher.stop()

    late = Inbox()
    reader = client(broker, unique("reader"))
    reader.subscribe(topic, late)
    reader.start()
    try:
        assert late.wait_for(1)
    finally:
        reader.stop()
    assert late.messages[0] == (topic, b"offline", True)


@pytest.mark.integration
def test_empty_retained_payload_deletes_the_retained_message(broker: EmbeddedBroker) -> None:
    topic = topics.manifest(unique("fleet"), "fraud")
    server = client(broker, unique("server"))
    server.start()
    try:
        server.publish_and_wait(topic, b"old manifest", retain=True)
        server.publish_and_wait(topic, b"", retain=True)
    finally:
        server.stop()

    inbox = Inbox()
    agent = client(broker, unique("agent"))
    agent.subscribe(topic, inbox)
    agent.start()
    try:
        # A retained message would be sent on SUBSCRIBE, before anything published after it.
        prove_subscribed(agent, inbox, topic)
    finally:
        agent.stop()
    assert len(inbox.messages) == 1
    assert inbox.messages[0][2] is False


def child_pids() -> set[str]:
    result = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True, check=False)
    return set(result.stdout.split())


@pytest.mark.integration
def test_stop_releases_the_port_and_leaves_no_process() -> None:
    before = child_pids()
    own = EmbeddedBroker().start()
    port = own.port
    assert child_pids() > before
    own.stop()
    own.stop()
    assert child_pids() == before
    with socket.socket() as s:
        # SO_REUSEADDR ignores TIME_WAIT leftovers but still fails while anything listens.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
