"""Replay against a real Mosquitto: every record arrives, then its label (integration)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pytest

from edge_agent.pipeline import clean_payloads
from shared import topics
from shared.datasets import fraud
from shared.datasets.split import dirichlet_partition
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import INGEST_WIRE_FORMATS, IngestWireFormat, LabelBatch, decode, loads_json
from shared.tasks.fraud_spec import base_feature_spec
from simulations.replay import Replayer

pytestmark = pytest.mark.integration


@dataclass
class Sink:
    """Collects what a device would receive; the handler runs on paho's thread."""

    records: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    labels_before_record: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: set[str] = field(default_factory=set)

    def on_ingest(self, device: str, payload: bytes) -> None:
        batch = loads_json(payload)
        assert isinstance(batch, list)
        with self.lock:
            for record in batch:
                self.records.setdefault(device, []).append(record["record_id"])
                self.seen.add(record["record_id"])

    def on_labels(self, device: str, payload: bytes) -> None:
        batch = decode(LabelBatch, payload)
        with self.lock:
            for label in batch.labels:
                if label.record_id not in self.seen:
                    self.labels_before_record.append(label.record_id)
                self.labels.setdefault(device, []).append((label.record_id, label.label))

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return sum(map(len, self.records.values())), sum(map(len, self.labels.values()))


def _wait_for(sink: Sink, records: int, labels: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sink.counts() != (records, labels) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def subscriber(mosquitto: Any) -> Iterator[tuple[MqttClient, str]]:
    fleet = f"fleet-{uuid.uuid4().hex[:8]}"
    client = MqttClient(BrokerAddress.parse(mosquitto.url), f"sub-{fleet}", persistent=False)
    client.start()
    try:
        yield client, fleet
    finally:
        client.stop()


def _route(sink: Callable[[str, bytes], None], device: str, _topic: str, payload: bytes, _retained: bool) -> None:
    sink(device, payload)


def _subscribe(client: MqttClient, fleet: str, devices: list[str], sink: Sink) -> None:
    for device in devices:
        client.subscribe(topics.ingest(fleet, device), partial(_route, sink.on_ingest, device))
        client.subscribe(topics.labels(fleet, device), partial(_route, sink.on_labels, device))
    # The broker handles SUBSCRIBEs in order: once a probe on the last one comes back,
    # every subscription above is live and no replayed message can be missed.
    probe = threading.Event()
    client.subscribe(topics.status(fleet, "probe"), lambda _t, _p, _r: probe.set())
    deadline = time.monotonic() + 10.0
    while not probe.is_set() and time.monotonic() < deadline:
        client.publish_and_wait(topics.status(fleet, "probe"), b"{}")
        probe.wait(0.2)
    assert probe.is_set()


def test_replay_delivers_records_then_labels(mosquitto: Any, subscriber: tuple[MqttClient, str]) -> None:
    client, fleet = subscriber
    parts = dirichlet_partition(fraud.synthetic(600, fraud_rate=0.05, seed=2), 3, alpha=0.5, seed=0)
    devices = ["dev-a", "dev-b", "dev-c"]
    streams = dict(zip(devices, parts, strict=True))
    sink = Sink()
    _subscribe(client, fleet, devices, sink)

    replayer = Replayer(
        mosquitto.url,
        fleet,
        streams,
        rate=2000.0,
        batch=7,
        label_delay=0.2,
        limit=40,
    )
    stats = replayer.run(until_done=True)
    expected = {d: min(40, len(p)) for d, p in streams.items()}
    total = sum(expected.values())
    _wait_for(sink, total, total)

    assert stats.done
    assert stats.records == total == stats.labels
    assert stats.per_device == expected
    assert {d: len(ids) for d, ids in sink.records.items()} == expected
    for device, part in streams.items():
        head = part.head(expected[device])
        assert sink.records[device] == head["record_id"].tolist()  # time order kept per device
        assert sorted(sink.labels[device]) == sorted(zip(head["record_id"], head["Class"].astype(int), strict=True))
    assert sink.labels_before_record == []


def test_background_replay_can_be_stopped(mosquitto: Any, subscriber: tuple[MqttClient, str]) -> None:
    client, fleet = subscriber
    sink = Sink()
    _subscribe(client, fleet, ["slow"], sink)
    replayer = Replayer(
        mosquitto.url,
        fleet,
        {"slow": fraud.synthetic(1000, seed=5)},
        rate=20.0,
        batch=1,
        label_delay=None,
    )
    replayer.run(until_done=False)
    _wait_for(sink, 3, 0, timeout=10.0)
    replayer.stop()
    stats = replayer.wait()
    assert not stats.done
    assert 3 <= stats.records < 1000
    assert stats.label_batches == 0


@dataclass
class RawSink(Sink):
    """Keeps the ingest payloads as they came, in whatever wire format."""

    payloads: list[bytes] = field(default_factory=list)

    def on_ingest(self, device: str, payload: bytes) -> None:
        with self.lock:
            self.payloads.append(payload)


@pytest.mark.parametrize("wire_format", INGEST_WIRE_FORMATS)
def test_every_wire_format_carries_the_same_records(
    mosquitto: Any, subscriber: tuple[MqttClient, str], wire_format: IngestWireFormat
) -> None:
    client, fleet = subscriber
    part = fraud.synthetic(200, fraud_rate=0.05, seed=4)
    sink = RawSink()
    _subscribe(client, fleet, ["dev"], sink)
    Replayer(
        mosquitto.url, fleet, {"dev": part}, rate=0, batch=9, label_delay=None, limit=50, wire_format=wire_format
    ).run(until_done=True)
    wait_for = time.monotonic() + 30.0
    while len(sink.payloads) < 6 and time.monotonic() < wait_for:
        time.sleep(0.05)
    assert len(sink.payloads) == 6  # 50 records, 9 per message
    result = clean_payloads(sink.payloads, base_feature_spec())  # as the agent reads them
    head = part.sort_values("Time", kind="mergesort").head(50)
    assert result.quarantined == []
    assert result.accepted.record_ids == head["record_id"].astype(str).tolist()
    assert np.array_equal(result.accepted.ts, head["Time"].to_numpy(dtype=np.float64))
    assert np.array_equal(result.accepted.values, head[list(fraud.RAW_FEATURES)].to_numpy(dtype=np.float64))
