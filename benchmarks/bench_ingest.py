"""Figure 3: ingest over MQTT into one agent, against a bare paho subscriber on the same broker.

A private Mosquitto runs on a free loopback port (no queue limits, like tests/conftest.py).
The agent (the real ``edge_agent.service.Agent``: its MQTT link on its asyncio loop, cleaning,
SQLite store, ONNX scoring of the fraud model and the prediction outbox) and a bare paho client
(QoS 1 subscription, ``on_message`` only counts) each hold a persistent session subscribed
to the same ingest topic. Each repeat publishes the same messages once while both are
offline, so the broker queues an identical copy for each; then each drains its copy alone
and is timed from its first message to its last one handled: for the agent, until every
record is stored and scored. That measures what each consumer can take, not the
publisher's speed. Messages carry ``records/message`` fraud records, either in the replay's
wire format (``simulations.replay``: a JSON array of ingest record objects), for figure 3c in
the packed form (``shared.schemas.packed_ingest_bytes``: the field names once, then one array
per record), or for figure 3d in the binary frame (``shared.schemas.binary_ingest_bytes``: a
small JSON header, then the numbers as float64); the bare subscriber counts the very messages
the agent gets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks.fraud_model import signed_fraud_model
from benchmarks.harness import Figure, Sample, parse_args, write_result
from edge_agent.config import AgentSettings
from edge_agent.inference import OnnxScorer
from edge_agent.pipeline import clean_payloads
from edge_agent.service import Agent
from edge_agent.store import BatchScores, SqliteAgentStore
from edge_agent.updater import ModelFiles
from shared import topics
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import IngestWireFormat, binary_ingest_bytes, packed_ingest_bytes, prediction_batch_bytes
from shared.signing import TrustStore, write_keypair
from shared.tasks.fraud import base_feature_spec
from simulations.mosquitto import private_mosquitto

FLEET = "bench"
DEVICE = "ingest-0"
GOAL = ">= 50% of the bare rate"
# (figure, records per message, wire format)
CASES: tuple[tuple[str, int, IngestWireFormat], ...] = (
    ("3a", 1, "records"),
    ("3b", 10, "records"),
    ("3c", 10, "packed"),
    ("3d", 10, "binary"),
)
FORMATS: dict[IngestWireFormat, str] = {"records": "record objects", "packed": "packed rows", "binary": "binary frame"}


def install_model(settings: AgentSettings, key: Ed25519PrivateKey) -> None:
    """A signed fraud model in the agent's model directory, as an installed update leaves it."""
    rng = np.random.default_rng(1)
    fit_rows = np.column_stack([rng.normal(0.0, 2.0, size=(5000, 28)), rng.exponential(90.0, size=5000)])
    model_bytes, manifest, _ = signed_fraud_model(fit_rows, key)
    ModelFiles(settings.models_dir).save(manifest, model_bytes)


def make_messages(count: int, per_message: int, repeat: int, wire: IngestWireFormat = "records") -> list[bytes]:
    """``count`` ingest messages of ``per_message`` fraud records, ids unique to this repeat."""
    rng = np.random.default_rng(repeat)
    names = base_feature_spec().names
    n = count * per_message
    array = np.column_stack([rng.normal(0.0, 2.0, size=(n, 28)), rng.exponential(90.0, size=n)])
    values = array.tolist()
    ids = [f"r{repeat}-{i}" for i in range(n)]
    if wire == "binary":
        return [
            binary_ingest_bytes(
                names, ids[i : i + per_message], np.arange(i, i + per_message), array[i : i + per_message]
            )
            for i in range(0, n, per_message)
        ]
    if wire == "packed":
        return [
            packed_ingest_bytes(names, ids[i : i + per_message], range(i, i + per_message), values[i : i + per_message])
            for i in range(0, n, per_message)
        ]
    records = [
        {
            "schema_version": 1,
            "record_id": f"r{repeat}-{i}",
            "ts": float(i),
            "features": dict(zip(names, row, strict=True)),
        }
        for i, row in enumerate(values)
    ]
    return [json.dumps(records[i : i + per_message], separators=(",", ":")).encode() for i in range(0, n, per_message)]


def publish_all(url: str, topic: str, messages: Sequence[bytes]) -> None:
    client = MqttClient(BrokerAddress.parse(url), f"bench-publisher-{os.getpid()}", persistent=False)
    client.start()
    try:
        mids = [client.publish(topic, m, qos=1) for m in messages]
        for mid in mids:
            if not client.wait_published(mid, 60.0):
                raise SystemExit("the broker did not acknowledge the benchmark's messages")
    finally:
        client.stop()


class BareSubscriber:
    """A paho client that only counts: the least any consumer of these messages does."""

    def __init__(self, url: str, topic: str) -> None:
        self.address = BrokerAddress.parse(url)
        self.topic = topic
        self.count = 0
        self.expected = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5
        )
        self.client.max_inflight_messages_set(100)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()

    def _on_connect(self, client: paho.Client, *_: object) -> None:
        client.subscribe(self.topic, qos=1)

    def prepare(self) -> None:
        """Create the persistent session and its subscription, then go offline."""
        self._connect()
        try:
            if not self.subscribed.wait(10):
                raise SystemExit("the bare subscriber's subscription was not acknowledged")
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect(self.address.host, self.address.port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        if self.count >= self.expected:
            self.last = now
            self.done.set()

    def drain(self, expected: int, timeout: float) -> float:
        """Connect, take ``expected`` messages; seconds from the first to the last."""
        self.count, self.expected = 0, expected
        self.done.clear()
        self._connect()
        try:
            if not self.done.wait(timeout):
                raise SystemExit(f"bare subscriber got {self.count} of {expected} messages")
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        return self.last - self.first


class AgentRun:
    """One agent, on its own thread and event loop, as ``fedforge agent`` runs it."""

    def __init__(self, settings: AgentSettings) -> None:
        self.agent = Agent(settings)
        self.first = 0.0
        self.first_cpu = 0.0
        handler = self.agent._on_message

        def observed(topic: str, payload: bytes, retained: bool) -> None:
            if self.first == 0.0:
                self.first = time.perf_counter()
                self.first_cpu = time.process_time()
            handler(topic, payload, retained)

        # The only instrumentation: note when (wall clock, process CPU) the first message reaches the agent.
        self.agent._on_message = observed  # type: ignore[method-assign]
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="bench-agent")
        self.error: BaseException | None = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self.agent.run_forever(self._stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> AgentRun:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def drain(self, records: int, timeout: float) -> float:
        """Seconds from the first message to the moment ``records`` more are stored and scored."""
        counters = self.agent.counters
        target_ingested = counters.ingested + records
        target_scored = counters.scored + records
        deadline = time.monotonic() + timeout
        while counters.ingested < target_ingested or counters.scored < target_scored:
            if self.error is not None:
                raise SystemExit(f"the agent failed: {self.error!r}")
            if counters.quarantined:
                raise SystemExit(f"the agent quarantined {counters.quarantined} benchmark records")
            if time.monotonic() > deadline:
                raise SystemExit(f"agent handled {counters.ingested} of {target_ingested} records in {timeout} s")
            time.sleep(0.001)
        return time.perf_counter() - self.first


def measure(
    per_message: int, wire: IngestWireFormat, count: int, repeats: int, url: str, settings: AgentSettings
) -> tuple[Sample, Sample, Sample, Sample]:
    """Rates of each side, and the process CPU time each side used per record (µs): on a loaded
    machine wall-clock rates swing with the neighbours, CPU time much less."""
    topic = topics.ingest(FLEET, DEVICE)
    bare = BareSubscriber(url, topic)
    bare.prepare()
    with AgentRun(settings):  # creates the agent's session and subscriptions
        pass
    agent_rates: list[float] = []
    bare_rates: list[float] = []
    agent_cpus: list[float] = []
    bare_cpus: list[float] = []
    for r in range(repeats):
        salt = 100 * list(FORMATS).index(wire)
        messages = make_messages(count, per_message, repeat=per_message * 1000 + salt + r, wire=wire)
        publish_all(url, topic, messages)  # queued once for each offline session
        records = count * per_message
        cpu = time.process_time()
        seconds = bare.drain(count, timeout=600)
        bare_cpu = time.process_time() - cpu
        bare_rates.append((count - 1) * per_message / seconds)
        with AgentRun(settings) as run:
            seconds = run.drain(records, timeout=600)
            # from the first message, like the rate: the agent's start (ONNX session, connect) is
            # a fixed cost that would otherwise weigh on short runs
            agent_cpu = time.process_time() - run.first_cpu
        # the first message's records are counted: the agent's clock starts before it handles them
        agent_rates.append(records / seconds)
        agent_cpus.append(agent_cpu / records * 1e6)
        bare_cpus.append(bare_cpu / records * 1e6)
    return (
        Sample(tuple(agent_rates), "records/s"),
        Sample(tuple(bare_rates), "records/s"),
        Sample(tuple(agent_cpus), "CPU µs/record"),
        Sample(tuple(bare_cpus), "CPU µs/record"),
    )


def stage_costs(settings: AgentSettings, per_message: int, wire: IngestWireFormat, records: int) -> dict[str, float]:
    """Where the agent's loop spends its time: CPU µs per record of each step of a flush, run
    on the same store, model and messages outside MQTT (the bare subscriber does none of them)."""
    stored = ModelFiles(settings.models_dir).load_current(TrustStore.from_files(settings.trusted_keys))
    scorer = OnnxScorer(stored.model_bytes, stored.manifest)
    spec = stored.manifest.feature_spec
    messages = make_messages(records // per_message, per_message, repeat=999, wire=wire)
    group = max(1, settings.max_batch // per_message)
    stages = ("decode+clean", "score", "prediction message", "outbox", "store scored records", "commit")
    cost = dict.fromkeys(stages, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteAgentStore(Path(tmp) / "stages.db")
        try:
            for start in range(0, len(messages), group):
                t = time.process_time()
                batch = clean_payloads(messages[start : start + group], spec).accepted
                cost["decode+clean"] += time.process_time() - t
                t = time.process_time()
                with store.atomic():  # scored before stored; the agent commits a whole flush (>= 1 chunk) at once
                    cost["commit"] += time.process_time() - t
                    t = time.process_time()
                    scores = scorer.score_raw(batch.values).tolist()
                    cost["score"] += time.process_time() - t
                    t = time.process_time()
                    alerts = [x >= 0.5 for x in scores]
                    payload = prediction_batch_bytes(DEVICE, 1, batch.record_ids, scores, alerts)
                    cost["prediction message"] += time.process_time() - t
                    t = time.process_time()
                    entry, _ = store.outbox_add("t", payload, batch.record_ids)
                    cost["outbox"] += time.process_time() - t
                    t = time.process_time()
                    store.add_batch(batch, BatchScores(1, scores, alerts))
                    cost["store scored records"] += time.process_time() - t
                    t = time.process_time()
                cost["commit"] += time.process_time() - t
                t = time.process_time()
                store.outbox_delete(entry)  # what the broker's ack triggers
                cost["outbox"] += time.process_time() - t
        finally:
            store.close()
    return {name: seconds / records * 1e6 for name, seconds in cost.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    logging.basicConfig(level=logging.WARNING)
    figures = []
    with tempfile.TemporaryDirectory(prefix="fedforge-bench-ingest-") as tmp:
        work = Path(tmp)
        key = write_keypair(work / "op.key", work / "op.pub")
        with private_mosquitto(work) as broker:
            url = broker.url
            for name, per_message, wire in CASES:
                settings = AgentSettings(
                    device_id=DEVICE,
                    fleet=FLEET,
                    broker_url=url,
                    data_dir=work / f"agent-{name}",
                    trusted_keys=[work / "op.pub"],
                    heartbeat_s=3600,
                    disk_check_s=3600,
                )
                install_model(settings, key)
                count = (300 if args.quick else 20_000 if per_message == 1 else 50_000) // per_message
                agent, bare, agent_cpu, bare_cpu = measure(
                    per_message, wire, count, 2 if args.quick else 9, url, settings
                )
                cpu_share = bare_cpu.median / agent_cpu.median
                print(f"[{name}] process CPU per record: agent {agent_cpu.describe()}, bare {bare_cpu.describe()}")
                stages = stage_costs(settings, per_message, wire, 1_000 if args.quick else 20_000)
                where = ", ".join(f"{step} {us:.1f}" for step, us in stages.items())
                figures.append(
                    Figure(
                        figure=f"{name} ingest over MQTT, {per_message} record(s)/message, {FORMATS[wire]}",
                        fedforge=agent,
                        anchor=bare,
                        anchor_name="bare paho subscriber counting the same messages",
                        better="higher",
                        goal=GOAL,
                        goal_met=agent.median >= 0.5 * bare.median,
                        notes=(
                            f"{count:,} messages x {per_message} record(s) per repeat ({FORMATS[wire]}), QoS 1, "
                            f"drained from a "
                            f"persistent session on a private Mosquitto; agent = cleaning + SQLite store + ONNX "
                            f"scoring + prediction outbox, timed until every record is stored and scored. Agent "
                            f"loop, CPU µs per record: {where} (the bare subscriber does none of these). Process "
                            f"CPU µs per record, agent {agent_cpu.median:.1f} "
                            f"({agent_cpu.low:.1f}..{agent_cpu.high:.1f}), bare {bare_cpu.median:.1f} "
                            f"({bare_cpu.low:.1f}..{bare_cpu.high:.1f}), bare/agent {cpu_share:.2f} (less "
                            f"sensitive to a busy machine)."
                        ),
                        extra={
                            "records_per_message": per_message,
                            "wire_format": wire,
                            "messages": count,
                            "agent_messages_per_s": agent.median / per_message,
                            "bare_messages_per_s": bare.median / per_message,
                            "agent_share_of_bare": agent.median / bare.median,
                            # bare CPU / agent CPU per record: the share a CPU-bound agent could reach
                            "cpu_share_of_bare": cpu_share,
                            "agent_cpu_us_per_record": agent_cpu.median,
                            "bare_cpu_us_per_record": bare_cpu.median,
                            **{f"loop_us_per_record_{k.replace(' ', '_')}": v for k, v in stages.items()},
                        },
                    )
                )
    write_result("bench_ingest", figures, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
