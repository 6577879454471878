"""The MQTT client with its I/O on an asyncio loop (the agent's mode), on a real Mosquitto."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from pathlib import Path

import pytest

from shared.mqtt import BrokerAddress, MqttClient
from shared.mqtt import loop as mqtt_loop
from simulations.mosquitto import PrivateMosquitto, RestartableMosquitto

pytestmark = pytest.mark.integration


async def _wait(condition: threading.Event) -> bool:
    """Wait without blocking the loop, which must keep reading; the deadline only turns a hang into a failure."""
    return await asyncio.get_running_loop().run_in_executor(None, condition.wait, 30.0)


@pytest.fixture(params=["bulk", "paho"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both read paths of the loop mode: the bulk one, and paho's own (what a paho release
    other than the pinned one gets)."""
    if request.param == "paho":
        monkeypatch.setattr(mqtt_loop, "FAST_READ_PAHO", "none")
    return str(request.param)


def test_messages_arrive_in_order_on_the_loop_thread_in_read_batches(
    mosquitto: PrivateMosquitto, read_path: str
) -> None:
    topic = f"t/{uuid.uuid4().hex[:8]}"
    count = 500
    got: list[bytes] = []
    batches: list[int] = []
    threads: set[int] = set()
    done = threading.Event()

    def on_message(t: str, payload: bytes, retained: bool) -> None:
        threads.add(threading.get_ident())
        got.append(payload)

    def after_read() -> None:
        threads.add(threading.get_ident())
        batches.append(len(got) - sum(batches))
        if len(got) == count:
            done.set()

    async def main() -> None:
        receiver = MqttClient(BrokerAddress.parse(mosquitto.url), f"r-{uuid.uuid4().hex[:8]}", persistent=False)
        receiver.subscribe(topic, on_message)
        await receiver.start_on_loop(after_read=after_read)
        assert receiver._io is not None
        assert receiver._io.fast == (read_path == "bulk")
        sender = MqttClient(BrokerAddress.parse(mosquitto.url), f"s-{uuid.uuid4().hex[:8]}", persistent=False)
        sender.start()
        try:
            for i in range(count):
                sender.publish(topic, str(i).encode(), qos=1)
            assert await _wait(done)
        finally:
            sender.stop()
            await receiver.stop_on_loop()
        assert not receiver.connected
        assert threads == {threading.get_ident()}  # no other thread ever ran a handler

    asyncio.run(main())
    assert got == [str(i).encode() for i in range(count)]
    assert sum(batches) == count
    assert all(batches)  # after_read only follows reads that delivered something


def test_a_publish_from_another_thread_is_sent_and_confirmed_on_the_loop(mosquitto: PrivateMosquitto) -> None:
    topic = f"t/{uuid.uuid4().hex[:8]}"
    delivered: list[int] = []
    confirmed = threading.Event()

    async def main() -> None:
        client = MqttClient(BrokerAddress.parse(mosquitto.url), f"c-{uuid.uuid4().hex[:8]}", persistent=False)
        await client.start_on_loop()
        loop_thread = threading.get_ident()

        def on_delivered() -> None:
            delivered.append(threading.get_ident())
            confirmed.set()

        try:
            worker = threading.Thread(target=lambda: client.publish(topic, b"x", qos=1, on_delivered=on_delivered))
            worker.start()
            worker.join()
            assert await _wait(confirmed)
        finally:
            await client.stop_on_loop()
        assert delivered == [loop_thread]

    asyncio.run(main())


def test_the_bulk_read_path_delivers_every_kind_of_publish_intact(mosquitto: PrivateMosquitto) -> None:
    """QoS 0, 1 and 2 (paho's path), retained, empty and large payloads mixed on one socket."""
    prefix = f"t/{uuid.uuid4().hex[:8]}"
    sizes = [1, 10, 4_000, 100_000]  # times 3 bytes
    live = [(f"{prefix}/live", f"{i:03d}".encode() * sizes[i % 4], i % 3) for i in range(120)]
    got: list[tuple[str, bytes, bool]] = []
    done = threading.Event()

    def on_message(t: str, payload: bytes, retained: bool) -> None:
        got.append((t, payload, retained))
        if len(got) == 3 + len(live):
            done.set()

    async def main() -> None:
        sender = MqttClient(BrokerAddress.parse(mosquitto.url), f"s-{uuid.uuid4().hex[:8]}", persistent=False)
        sender.start()
        receiver = MqttClient(BrokerAddress.parse(mosquitto.url), f"r-{uuid.uuid4().hex[:8]}", persistent=False)
        try:
            for i in range(3):
                sender.publish_and_wait(f"{prefix}/kept/{i}", b"k" * (1 + i * 70_000), retain=True)
            receiver.subscribe(f"{prefix}/#", on_message, qos=2)
            await receiver.start_on_loop()
            assert receiver._io is not None
            assert receiver._io.fast  # the path under test
            for topic, payload, qos in live:
                sender.publish(topic, payload, qos=qos)
            assert await _wait(done)
        finally:
            sender.stop()
            await receiver.stop_on_loop()

    asyncio.run(main())
    kept = sorted(m for m in got if m[2])
    assert kept == [(f"{prefix}/kept/{i}", b"k" * (1 + i * 70_000), True) for i in range(3)]
    received = [(t, p) for t, p, retained in got if not retained]
    # QoS 0 and 1 keep their order; QoS 2 completes later (PUBREL), all of them arrive
    assert [m for m in received if m in [(t, p) for t, p, q in live if q < 2]] == [(t, p) for t, p, q in live if q < 2]
    assert sorted(received) == sorted((t, p) for t, p, _ in live)


def test_a_broker_restart_mid_stream_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """A packet cut by the broker's restart must not be glued to the next connection's bytes."""
    broker = RestartableMosquitto(tmp_path / "broker")
    broker.start()
    topic = f"t/{uuid.uuid4().hex[:8]}"
    expected = {f"{i:04d}".encode() + bytes(50_000) for i in range(200)}
    got: set[bytes] = set()
    done = threading.Event()

    def on_message(t: str, payload: bytes, retained: bool) -> None:
        got.add(payload)
        if got >= expected:
            done.set()

    async def main() -> None:
        receiver = MqttClient(BrokerAddress.parse(broker.url), f"r-{uuid.uuid4().hex[:8]}")
        receiver.subscribe(topic, on_message)
        await receiver.start_on_loop()
        sender = MqttClient(BrokerAddress.parse(broker.url), f"s-{uuid.uuid4().hex[:8]}")
        sender.start()
        try:
            payloads = sorted(expected)
            mids = [sender.publish(topic, p, qos=1) for p in payloads[:100]]
            loop = asyncio.get_running_loop()
            for mid in mids:
                assert await loop.run_in_executor(None, sender.wait_published, mid, 30.0)
            await loop.run_in_executor(None, broker.stop)  # most likely while the receiver is mid-packet
            await loop.run_in_executor(None, broker.start)
            mids = [sender.publish(topic, p, qos=1) for p in payloads[100:]]
            assert await _wait(done)
        finally:
            sender.stop()
            await receiver.stop_on_loop()

    try:
        asyncio.run(main())
    finally:
        broker.stop()
    assert got == expected


def test_a_broken_packet_stream_drops_the_connection_and_the_client_comes_back() -> None:
    """A peer that sends an impossible remaining length (a corrupt stream): the bulk read hands
    it to paho, which refuses it as a protocol error and closes; the loop keeps running and the
    client reconnects. A real broker never does this, so the peer is a plain socket."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(2)
    server.settimeout(30)
    port = server.getsockname()[1]
    connacks = 0

    def peer() -> None:
        nonlocal connacks
        for attempt in range(2):
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)  # CONNECT
                conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK, success, no properties
                connacks += 1
                if attempt == 0:
                    conn.sendall(b"\x30\xff\xff\xff\xff\x01")  # a fifth length byte
                    conn.settimeout(30)
                    while conn.recv(1024):  # until the client closes
                        pass

    async def main() -> int:
        client = MqttClient(BrokerAddress.parse(f"mqtt://127.0.0.1:{port}"), f"c-{uuid.uuid4().hex[:8]}")
        await client.start_on_loop()
        try:
            for _ in range(300):  # the client is back within its 1 s reconnect delay
                if client.connects == 2:
                    break
                await asyncio.sleep(0.1)
            return client.connects
        finally:
            await client.stop_on_loop(grace_s=1.0)

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        assert asyncio.run(main()) == 2
    finally:
        server.close()
        thread.join(5)
    assert connacks == 2
