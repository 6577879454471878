"""Predictions scored while the broker is away reach a subscriber once it is back, whether the
agent kept running (paho resends) or was restarted (the on-disk outbox resends)."""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.pipeline import CleanBatch
from edge_agent.service import Agent
from edge_agent.store import BatchScores
from edge_agent.store import sqlite as sqlite_store
from edge_agent.updater import ModelFiles
from shared import topics
from shared.features import FeatureSpec
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import PredictionBatch
from simulations.mosquitto import RestartableMosquitto
from tests.edge_agent.agent_harness import AgentThread, wait_for
from tests.edge_agent.agent_testlib import GOOD, payload, record
from tests.edge_agent.conftest import Bundle, Keys

pytestmark = pytest.mark.integration

DEVICE = "dev1"
BATCHES = 5
PER_BATCH = 7


class Subscriber:
    """Persistent session: what is published while it is cut off is queued for it."""

    def __init__(self, url: str, fleet: str) -> None:
        self._lock = threading.Lock()
        self.batches: list[PredictionBatch] = []
        self.client = MqttClient(BrokerAddress.parse(url), f"test-sub-{uuid.uuid4().hex[:8]}", persistent=True)
        self.client.subscribe(topics.predictions(fleet, DEVICE), self._on_predictions)
        self.client.start()

    def _on_predictions(self, topic: str, data: bytes, retained: bool) -> None:
        with self._lock:
            self.batches.append(PredictionBatch.model_validate_json(data))

    def record_ids(self) -> set[str]:
        with self._lock:
            return {p.record_id for b in self.batches for p in b.predictions}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RestartableMosquitto]:
    b = RestartableMosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def settings(broker: RestartableMosquitto, tmp_path: Path, operator_keys: Keys, make_bundle: object) -> AgentSettings:
    s = AgentSettings(
        device_id=DEVICE,
        fleet=f"t{uuid.uuid4().hex[:10]}",
        broker_url=broker.url,
        data_dir=tmp_path / "agent",
        trusted_keys=[operator_keys.public_path],
        heartbeat_s=1.0,
        max_batch=64,
    )
    bundle: Bundle = make_bundle(1)  # type: ignore[operator]
    ModelFiles(s.models_dir).save(bundle.manifest, bundle.model_bytes)  # served from disk at start
    return s


@pytest.fixture
def subscriber(broker: RestartableMosquitto, settings: AgentSettings) -> Iterator[Subscriber]:
    sub = Subscriber(broker.url, settings.fleet)
    yield sub
    sub.client.stop()


def score_offline(run: AgentThread, broker: RestartableMosquitto) -> set[str]:
    """Stop the broker, then feed ingest straight to the agent (the broker cannot carry it)."""
    agent = run.agent
    assert agent is not None
    assert agent.slot.current is not None
    broker.stop()
    wait_for(lambda: not agent.link.connected, what="agent to notice the broker is gone")
    ids: set[str] = set()
    for b in range(BATCHES):
        batch = [record(f"b{b}r{i}") for i in range(PER_BATCH)]
        ids.update(r["record_id"] for r in batch)
        message = (agent.link.ingest_topic, payload(batch))
        run.call(functools.partial(agent.handle_batch, [message]))
    assert agent.counters.scored == len(ids)
    assert run.call(agent.outbox.depth) == BATCHES
    return ids


def test_broker_outage_predictions_delivered_after_broker_restart(
    settings: AgentSettings, broker: RestartableMosquitto, subscriber: Subscriber, spec: FeatureSpec
) -> None:
    with AgentThread(settings, feature_spec=spec) as run:
        ids = score_offline(run, broker)
        broker.start()  # same port: paho reconnects and resends what it holds
        wait_for(lambda: ids <= subscriber.record_ids(), what="every prediction delivered")
        agent = run.agent
        assert agent is not None
        wait_for(lambda: run.call(agent.outbox.depth) == 0, what="outbox drained")
        assert run.call(lambda: agent.status("heartbeat").outbox_depth) == 0


def test_agent_restart_resends_outbox_from_disk(
    settings: AgentSettings, broker: RestartableMosquitto, subscriber: Subscriber, spec: FeatureSpec
) -> None:
    with AgentThread(settings, feature_spec=spec) as run:
        ids = score_offline(run, broker)
    # The agent is gone with paho's in-memory queue; only the outbox on disk holds the batches.
    broker.start()
    with AgentThread(settings, feature_spec=spec) as run:
        agent = run.agent
        assert agent is not None
        wait_for(lambda: ids <= subscriber.record_ids(), what="every prediction delivered")
        wait_for(lambda: run.call(agent.outbox.depth) == 0, what="outbox drained")
        assert agent.counters.scored == len(ids)  # delivered from the outbox, not scored again


def test_status_reports_outbox_depth(settings: AgentSettings) -> None:
    agent = Agent(settings)
    try:
        agent.store.outbox_add("x", b"y")
        assert agent.status("heartbeat").outbox_depth == 1
    finally:
        agent.store.close()


def publish_ingest(url: str, topic: str, *record_ids: str) -> None:
    publisher = MqttClient(BrokerAddress.parse(url), f"test-pub-{uuid.uuid4().hex[:8]}", persistent=False)
    publisher.start()
    try:
        for rid in record_ids:
            publisher.publish_and_wait(topic, payload([record(rid)]))
    finally:
        publisher.stop()


def test_ingest_flows_again_after_a_broker_restart(
    settings: AgentSettings, broker: RestartableMosquitto, subscriber: Subscriber, spec: FeatureSpec
) -> None:
    """The link runs on the agent's loop: it notices the drop, reconnects to its persistent
    session (subscriptions kept), and ingest published meanwhile is stored and scored."""
    with AgentThread(settings, feature_spec=spec) as run:
        agent = run.agent
        assert agent is not None
        topic = agent.link.ingest_topic
        publish_ingest(broker.url, topic, "before")
        wait_for(lambda: "before" in subscriber.record_ids(), what="prediction before the restart")
        broker.stop()
        wait_for(lambda: not agent.link.connected, what="agent to notice the broker is gone")
        broker.start()
        publish_ingest(broker.url, topic, "during")  # queued in the agent's session if it is not back yet
        wait_for(lambda: agent.link.connected, what="agent to reconnect")
        publish_ingest(broker.url, topic, "after")
        wait_for(lambda: {"during", "after"} <= subscriber.record_ids(), what="predictions after the restart")
        assert agent.link.connects == 2
        assert run.call(agent.store.counts)["records"] == 3


def test_a_batch_cut_off_before_its_acknowledgement_is_delivered_again(
    settings: AgentSettings, broker: RestartableMosquitto, subscriber: Subscriber, spec: FeatureSpec
) -> None:
    """The broker goes away while the agent handles a message: the acknowledgement is written
    only after the batch, so it never reaches the broker, which delivers the message again
    after the restart. The records were stored once; the second copy is a known duplicate."""
    with AgentThread(settings, feature_spec=spec) as run:
        agent = run.agent
        assert agent is not None
        handle = agent.handle_batch
        cut = threading.Event()

        def handle_with_outage(batch: Sequence[tuple[str, bytes]]) -> None:
            if not cut.is_set() and any(b'"cut"' in p for _, p in batch):
                cut.set()
                broker.stop()  # on the agent's loop, between reading the message and acknowledging it
            handle(batch)

        run.call(lambda: setattr(agent, "handle_batch", handle_with_outage))
        publish_ingest(broker.url, agent.link.ingest_topic, "cut")
        wait_for(cut.is_set, what="the outage")
        wait_for(lambda: not agent.link.connected, what="agent to notice the broker is gone")
        broker.start()
        wait_for(lambda: agent.counters.quarantined == 1, what="the message delivered again")
        assert run.call(agent.store.recent_quarantine)[0].reason.startswith("duplicate")
        assert run.call(agent.store.counts)["records"] == 1
        wait_for(lambda: "cut" in subscriber.record_ids(), what="its prediction")


def test_ingest_stays_with_the_broker_while_the_store_cannot_write(
    settings: AgentSettings,
    broker: RestartableMosquitto,
    subscriber: Subscriber,
    spec: FeatureSpec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store cannot write (another process holds its write lock past the busy timeout):
    acknowledging the message would lose it, so the agent acknowledges nothing, reconnects,
    and the broker delivers it again; once the store writes again it is stored once, and
    nothing is quarantined."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 200)
    with AgentThread(settings, feature_spec=spec) as run:
        agent = run.agent
        assert agent is not None
        locker = sqlite3.connect(settings.db_path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            publish_ingest(broker.url, agent.link.ingest_topic, "held")
            wait_for(lambda: agent.link.connects >= 3, what="the message refused twice, the agent back twice")
            assert agent.counters.ingested == 0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        wait_for(lambda: "held" in subscriber.record_ids(), what="its prediction once the store writes again")
        assert agent.counters.ingested == 1
        assert agent.counters.quarantined == 0
        assert run.call(agent.store.counts)["records"] == 1


def test_a_chunk_the_store_fails_on_for_a_bug_is_quarantined_and_the_rest_stored(
    settings: AgentSettings, broker: RestartableMosquitto, subscriber: Subscriber, spec: FeatureSpec
) -> None:
    """Not the disk but a bug (here: the real store's add_batch raising for one chunk): the
    chunk's records are kept in quarantine as the record objects they were, with the reason,
    and the other chunks of the same message are stored and scored."""
    with AgentThread(settings, feature_spec=spec) as run:
        agent = run.agent
        assert agent is not None
        store = agent.store
        add_batch = store.add_batch

        def failing(batch: CleanBatch, scores: BatchScores | None = None) -> CleanBatch:
            if "boom" in batch.record_ids:
                raise ValueError("a bug in the store")
            return add_batch(batch, scores)

        run.call(lambda: setattr(store, "add_batch", failing))
        good = [f"ok{i}" for i in range(settings.max_batch)]  # the first chunk
        bad = ["boom", "late1", "late2"]  # the second chunk of the same message
        publisher = MqttClient(BrokerAddress.parse(broker.url), f"test-pub-{uuid.uuid4().hex[:8]}", persistent=False)
        publisher.start()
        try:
            publisher.publish_and_wait(agent.link.ingest_topic, payload([record(rid) for rid in good + bad]))
        finally:
            publisher.stop()
        wait_for(lambda: agent.counters.quarantined == len(bad), what="the failed chunk in quarantine")
        wait_for(lambda: set(good) <= subscriber.record_ids(), what="the first chunk's predictions")
        assert run.call(store.counts)["records"] == len(good)
        entries = run.call(store.recent_quarantine)
        assert sorted(e.record_id or "" for e in entries) == sorted(bad)
        assert all(e.reason.startswith("internal error while storing: ValueError") for e in entries)
        boom = next(e for e in entries if e.record_id == "boom")
        assert json.loads(boom.raw) == {**record("boom"), "features": dict(zip(spec.names, GOOD, strict=True))}
