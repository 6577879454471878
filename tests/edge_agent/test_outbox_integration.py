"""Predictions scored while the broker is away reach a subscriber once it is back, whether the
agent kept running (paho resends) or was restarted (the on-disk outbox resends)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.service import Agent
from edge_agent.updater import ModelFiles
from shared import topics
from shared.features import FeatureSpec
from shared.mqtt import BrokerAddress, MqttClient
from shared.net import free_port, wait_port
from shared.schemas import PredictionBatch
from simulations.mosquitto import stop_process_group
from tests.edge_agent.agent_harness import AgentThread, wait_for
from tests.edge_agent.agent_testlib import payload, record
from tests.edge_agent.conftest import Bundle, Keys

pytestmark = pytest.mark.integration

DEVICE = "dev1"
BATCHES = 5
PER_BATCH = 7


class PersistentBroker:
    """A Mosquitto that can be stopped and restarted on the same port, keeping its sessions
    (persistence on), so a subscriber's queued messages survive the outage."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        # Started as root, mosquitto would switch to its own user, which cannot write into tmp_path.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n{user}"
            f"persistence_location {directory}/\nmax_queued_messages 0\nlog_type error\nlog_dest stderr\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], start_new_session=True)
        if not wait_port(self.port):
            raise TimeoutError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None


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
def broker(tmp_path: Path) -> Iterator[PersistentBroker]:
    b = PersistentBroker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def settings(broker: PersistentBroker, tmp_path: Path, operator_keys: Keys, make_bundle: object) -> AgentSettings:
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
def subscriber(broker: PersistentBroker, settings: AgentSettings) -> Iterator[Subscriber]:
    sub = Subscriber(broker.url, settings.fleet)
    yield sub
    sub.client.stop()


def score_offline(run: AgentThread, broker: PersistentBroker) -> set[str]:
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
    settings: AgentSettings, broker: PersistentBroker, subscriber: Subscriber, spec: FeatureSpec
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
    settings: AgentSettings, broker: PersistentBroker, subscriber: Subscriber, spec: FeatureSpec
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
