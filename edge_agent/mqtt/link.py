"""The agent's side of the wire: its topics, its persistent session, its will.

A stable client id plus a persistent session (shared.mqtt) means ingest published while
the agent was down is delivered when it comes back; the retained offline will tells the
cloud when it disappears without saying goodbye.

The link also tells the broker how many QoS 1 messages it may have in flight to this agent
(MQTT 5 Receive Maximum). Without it a model release is a burst: every agent subscribes to
the retained chunks as the manifest arrives, and the broker serialises all of them for all
agents at once (a 10 MiB model to 100 agents peaked Mosquitto at 330-450 MB). With a window
of 16 the broker holds at most 16 chunks per agent (4 MiB at 256 KiB chunks; measured peak
~30 MB) and the rest as shared references; 4 halved that again but cost ~30 % in time
(benchmarks/bench_distribution.py, figure 7). Ingest is QoS 1 too, and the agent, which runs the
link on its asyncio loop (``start_on_loop``), acknowledges a message only after committing it
(or, when its store cannot write, not at all: the broker keeps it). What one readable event
carries is bounded by the bulk read (``shared.mqtt.loop.RECV_BYTES``), not by the window:
Mosquitto 2.0.11 keeps to a client's Receive Maximum only until the client's first PUBACK, then
sends past it (measured with a bare client: 16 before any ack, over 200 in one read after; 2.0.13
lists fixes to its inflight quota, see deploy/mosquitto/mosquitto.conf). Other users of the link
(benchmarks/distribution_worker.py) run it on paho's thread (``start``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared import topics
from shared.mqtt import BrokerAddress, MessageHandler, MqttClient, TlsKwargs, Will
from shared.schemas import ChunkRequest, CommandAck, DeviceStatus, PredictionBatch

# Unacknowledged QoS 1 messages the broker may push to one agent (see the module docstring).
RECEIVE_MAXIMUM = 16


def client_id_for(fleet: str, device_id: str) -> str:
    return f"fedforge-agent-{fleet}-{device_id}"


class AgentLink:
    def __init__(self, broker_url: str, fleet: str, device_id: str, task: str, tls: TlsKwargs | None = None) -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.task = task
        self.ingest_topic = topics.ingest(fleet, device_id)
        self.labels_topic = topics.labels(fleet, device_id)
        self.commands_topic = topics.commands(fleet, device_id)
        self.config_topic = topics.device_config(fleet, device_id)
        self.fleet_commands_topic = topics.fleet_commands(fleet)
        self.acks_topic = topics.acks(fleet, device_id)
        self.manifest_topic = topics.manifest(fleet, task)
        self.status_topic = topics.status(fleet, device_id)
        self.predictions_topic = topics.predictions(fleet, device_id)
        self.model_request_topic = topics.model_request(fleet, device_id)
        will = Will(self.status_topic, self.offline_status(seq=0).to_bytes(), qos=1, retain=True)
        self._client = MqttClient(
            BrokerAddress.parse(broker_url),
            client_id_for(fleet, device_id),
            persistent=True,
            will=will,
            receive_maximum=RECEIVE_MAXIMUM,
            **(tls or TlsKwargs()),
        )

    def offline_status(self, seq: int, **fields: object) -> DeviceStatus:
        return DeviceStatus.model_validate(
            {
                "device_id": self.device_id,
                "fleet": self.fleet,
                "kind": "offline",
                "health": "offline",
                "ts": time.time(),
                "seq": seq,
                **fields,
            }
        )

    def start(self, handler: MessageHandler, timeout: float = 10.0) -> None:
        """Subscribe the agent's fixed topics (before connecting, so they survive reconnects);
        paho's thread calls ``handler``."""
        self._subscribe_fixed(handler)
        self._client.start(timeout=timeout)

    async def start_on_loop(
        self, handler: MessageHandler, after_read: Callable[[], None], connect_s: float = 10.0
    ) -> None:
        """As ``start``, with the I/O on the running loop: ``handler`` is called there for each
        message of a readable event, then ``after_read`` once; the acknowledgements follow."""
        self._subscribe_fixed(handler)
        await self._client.start_on_loop(connect_s=connect_s, after_read=after_read)

    def _subscribe_fixed(self, handler: MessageHandler) -> None:
        fixed = (self.ingest_topic, self.labels_topic, self.manifest_topic, self.commands_topic, self.config_topic)
        for topic in (*fixed, self.fleet_commands_topic):
            self._client.subscribe(topic, handler, qos=topics.QOS_AT_LEAST_ONCE)

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        self._client.subscribe(topic_filter, handler, qos=topics.QOS_AT_LEAST_ONCE)

    def unsubscribe(self, topic_filter: str) -> None:
        self._client.unsubscribe(topic_filter)

    def publish_status(self, status: DeviceStatus) -> int:
        return self._client.publish(self.status_topic, status.to_bytes(), qos=1, retain=True)

    def publish_chunk_request(self, request: ChunkRequest) -> int:
        return self._client.publish(self.model_request_topic, request.to_bytes(), qos=1)

    def publish_ack(self, ack: CommandAck) -> int:
        return self._client.publish(self.acks_topic, ack.to_bytes(), qos=1)

    def publish_predictions(self, batch: PredictionBatch) -> int:
        return self._client.publish(self.predictions_topic, batch.to_bytes(), qos=1)

    def publish_tracked(self, topic: str, payload: bytes, on_delivered: Callable[[], None]) -> int:
        """QoS 1 publish whose broker ack calls ``on_delivered`` (on the thread doing the link's
        I/O; must not block)."""
        return self._client.publish(topic, payload, qos=1, on_delivered=on_delivered)

    @property
    def connects(self) -> int:
        """Successful connections so far: a change means a reconnect happened."""
        return self._client.connects

    def wait_published(self, mid: int, timeout: float) -> bool:
        return self._client.wait_published(mid, timeout)

    @property
    def connected(self) -> bool:
        return self._client.connected

    def stop(self) -> None:
        self._client.stop()

    async def stop_on_loop(self) -> None:
        await self._client.stop_on_loop()
