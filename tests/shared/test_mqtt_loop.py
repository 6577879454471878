"""The MQTT client with its I/O on an asyncio loop (the agent's mode), on a real Mosquitto."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from shared.mqtt import BrokerAddress, MqttClient
from simulations.mosquitto import PrivateMosquitto

pytestmark = pytest.mark.integration


async def _wait(condition: threading.Event) -> bool:
    """Wait without blocking the loop, which must keep reading; the deadline only turns a hang into a failure."""
    return await asyncio.get_running_loop().run_in_executor(None, condition.wait, 30.0)


def test_messages_arrive_in_order_on_the_loop_thread_in_read_batches(mosquitto: PrivateMosquitto) -> None:
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
