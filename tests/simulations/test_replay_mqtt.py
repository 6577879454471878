"""Replay against a real Mosquitto: every record arrives, then its label (integration)."""

from __future__ import annotations

import json
import math
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
from shared.errors import DatasetError
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import (
    INGEST_WIRE_FORMATS,
    IngestWireFormat,
    LabelBatch,
    decode,
    ingest_record_object,
    loads_json,
)
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


Replay = Callable[..., list[bytes]]


@pytest.fixture
def replayed(mosquitto: Any, subscriber: tuple[MqttClient, str]) -> Replay:
    """``replayed(part, wire_format, limit=None)``: the ingest payloads of ``part`` (its first
    ``limit`` records) replayed in ``wire_format``, 9 records a message, as a device gets them."""
    client, fleet = subscriber

    def replay(part: Any, wire_format: IngestWireFormat, limit: int | None = None) -> list[bytes]:
        sink = RawSink()
        _subscribe(client, fleet, ["dev"], sink)
        replayer = Replayer(
            mosquitto.url, fleet, {"dev": part}, rate=0, batch=9, label_delay=None, limit=limit, wire_format=wire_format
        )
        replayer.run(until_done=True)
        records = len(part) if limit is None else min(len(part), limit)
        wait_for = time.monotonic() + 30.0
        while len(sink.payloads) < -(-records // 9) and time.monotonic() < wait_for:
            time.sleep(0.05)
        assert len(sink.payloads) == -(-records // 9)
        return sink.payloads

    return replay


@pytest.mark.parametrize("wire_format", INGEST_WIRE_FORMATS)
def test_every_wire_format_carries_the_same_records(replayed: Replay, wire_format: IngestWireFormat) -> None:
    part = fraud.synthetic(200, fraud_rate=0.05, seed=4)
    payloads = replayed(part, wire_format, limit=50)
    assert len(payloads) == 6  # 50 records, 9 per message
    result = clean_payloads(payloads, base_feature_spec())  # as the agent reads them
    head = part.sort_values("Time", kind="mergesort").head(50)
    assert result.quarantined == []
    assert result.accepted.record_ids == head["record_id"].astype(str).tolist()
    assert np.array_equal(result.accepted.ts, head["Time"].to_numpy(dtype=np.float64))
    assert np.array_equal(result.accepted.values, head[list(fraud.RAW_FEATURES)].to_numpy(dtype=np.float64))


def _null_twin(frame: Any) -> bytes:
    """``frame``'s records as a sensor sends them when a value is missing: JSON null, by hand."""

    def number(value: Any) -> float | None:
        return None if math.isnan(value) else float(value)

    return json.dumps(
        [
            ingest_record_object(
                str(row["record_id"]), number(row["Time"]), {n: number(row[n]) for n in fraud.RAW_FEATURES}
            )
            for _, row in frame.iterrows()
        ]
    ).encode()


def _decisions(result: Any) -> tuple[list[str], list[tuple[str | None, str, Any]]]:
    return result.accepted.record_ids, [(q.record_id, q.reason, loads_json(q.raw)) for q in result.quarantined]


@pytest.mark.parametrize("wire_format", INGEST_WIRE_FORMATS)
def test_a_nan_goes_out_as_a_missing_value_in_every_wire_format(
    replayed: Replay, wire_format: IngestWireFormat
) -> None:
    part = fraud.synthetic(40, fraud_rate=0.05, seed=6)
    part.loc[3, "V3"] = np.nan
    part.loc[11, "Amount"] = np.nan
    part.loc[20, "Time"] = np.nan  # a record without a timestamp: replayed last (time order)
    payloads = replayed(part, wire_format)
    spec = base_feature_spec()
    result = clean_payloads(payloads, spec)  # as the agent reads them
    twin = clean_payloads([_null_twin(part.sort_values("Time", kind="mergesort"))], spec)
    accepted, quarantined = _decisions(result)
    assert (accepted, quarantined) == _decisions(twin)
    assert {rid for rid, _, _ in quarantined} == {str(part.loc[i, "record_id"]) for i in (3, 11, 20)}
    assert all("expected a number, got null" in reason for _, reason, _ in quarantined)
    assert len(accepted) == 37
    assert np.array_equal(result.accepted.values, twin.accepted.values)


@pytest.mark.parametrize("wire_format", ["records", "packed"])
def test_the_json_wire_formats_refuse_an_infinity(mosquitto: Any, wire_format: IngestWireFormat) -> None:
    part = fraud.synthetic(20, fraud_rate=0.05, seed=7)
    part.loc[5, "V7"] = np.inf
    replayer = Replayer(mosquitto.url, "fleet-inf", {"dev": part}, rate=0, label_delay=None, wire_format=wire_format)
    with pytest.raises(DatasetError, match="infinite values"):
        replayer.run()


def test_the_binary_frame_carries_an_infinity(replayed: Replay) -> None:
    part = fraud.synthetic(20, fraud_rate=0.05, seed=7)
    part.loc[5, "V7"] = np.inf
    result = clean_payloads(replayed(part, "binary"), base_feature_spec())
    assert [(q.record_id, q.reason) for q in result.quarantined] == [
        (str(part.loc[5, "record_id"]), "feature 'V7': not a finite number (inf)")
    ]
    assert len(result.accepted.record_ids) == 19
