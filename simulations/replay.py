"""Replay partitions to a fleet over MQTT as sensors would, with labels arriving later.

Each device's records go out in time order on its ingest topic, ``batch`` records per
message at ``rate`` records per second; the true labels of a batch follow ``label_delay``
seconds later on its labels topic, which is the feedback loop agents train on. Records go
out in one of the agents' ingest forms (``shared.schemas.INGEST_WIRE_FORMATS``): a JSON
array of record objects, the packed JSON form, or the binary frame. A NaN in the data is a
missing value and goes out as one in every form (JSON null, NaN in the frame), so the agent
judges its record exactly as it would a sensor's null; an infinity only the binary frame
carries, the JSON forms refuse it (``DatasetError``). The schedule is a pure
function (``schedule``) so its order and timing are testable without a broker;
``Replayer`` only sleeps until each event and publishes it.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # no pandas-stubs in the venv

from shared import topics
from shared.datasets.fraud import ID_COLUMN, LABEL_COLUMN, RAW_FEATURES, TIME_COLUMN
from shared.datasets.split import ingest_columns, to_ingest_records
from shared.errors import DatasetError
from shared.mqtt import BrokerAddress, MqttClient, MqttError
from shared.schemas import (
    INGEST_WIRE_FORMATS,
    MAX_JSON_PAYLOAD_BYTES,
    IngestWireFormat,
    Label,
    LabelBatch,
    binary_ingest_bytes,
    packed_ingest_bytes,
)

log = logging.getLogger(__name__)

# Outstanding QoS 1 publishes before the replayer waits for acknowledgements: keeps paho's
# in-memory queue bounded when replaying the full set as fast as possible.
MAX_UNACKED = 1000
ACK_TIMEOUT_S = 30.0


@dataclass(frozen=True, order=True)
class Event:
    """One publish ``at`` seconds after the start; ``order`` (per-device sequence, device rank) breaks ties."""

    at: float
    order: tuple[int, int]
    device: str = field(compare=False)
    kind: Literal["ingest", "labels"] = field(compare=False)
    start: int = field(compare=False)
    stop: int = field(compare=False)


def _device_events(device: str, n: int, rank: int, rate: float, batch: int, label_delay: float) -> Iterator[Event]:
    """One device's events in time order; a batch's labels follow its records by ``label_delay``."""
    pending: deque[tuple[float, int, int]] = deque()
    seq = 0
    for start in range(0, n, batch):
        at = start / rate if rate > 0 else 0.0
        stop = min(start + batch, n)
        while pending and pending[0][0] <= at:
            label_at, label_start, label_stop = pending.popleft()
            yield Event(label_at, (seq, rank), device, "labels", label_start, label_stop)
            seq += 1
        yield Event(at, (seq, rank), device, "ingest", start, stop)
        seq += 1
        if label_delay >= 0:
            pending.append((at + label_delay, start, stop))
    for label_at, label_start, label_stop in pending:
        yield Event(label_at, (seq, rank), device, "labels", label_start, label_stop)
        seq += 1


def schedule(sizes: Mapping[str, int], rate: float, batch: int, label_delay: float | None) -> Iterator[Event]:
    """Every device's events merged by time; ``label_delay=None`` sends no labels."""
    if batch < 1:
        raise DatasetError(f"batch must be >= 1 record, got {batch}")
    delay = -1.0 if label_delay is None else label_delay
    streams = [_device_events(device, n, rank, rate, batch, delay) for rank, (device, n) in enumerate(sizes.items())]
    return heapq.merge(*streams)


@dataclass
class ReplayStats:
    records: int = 0
    messages: int = 0
    label_batches: int = 0
    labels: int = 0
    seconds: float = 0.0
    per_device: dict[str, int] = field(default_factory=dict)
    done: bool = False


class Replayer:
    """Publishes prepared per-device frames to ``fleet``; run in the caller's thread or a background one."""

    def __init__(
        self,
        broker_url: str,
        fleet: str,
        streams: Mapping[str, pd.DataFrame],
        *,
        rate: float = 50.0,
        batch: int = 10,
        label_delay: float | None = 5.0,
        limit: int | None = None,
        feature_names: Sequence[str] = RAW_FEATURES,
        client_id: str | None = None,
        wire_format: IngestWireFormat = "records",
    ) -> None:
        if limit is not None and limit < 0:
            raise DatasetError(f"limit must be >= 0, got {limit}")
        if wire_format not in INGEST_WIRE_FORMATS:
            raise DatasetError(f"wire format must be one of {', '.join(INGEST_WIRE_FORMATS)}, got {wire_format!r}")
        self.wire_format = wire_format
        self.fleet = fleet
        self.rate = rate
        self.batch = batch
        self.label_delay = label_delay
        self._frames: dict[str, pd.DataFrame] = {}
        for device, df in streams.items():
            topics.ingest(fleet, device)  # a bad fleet or device name fails here, not mid-replay
            frame = df.sort_values(TIME_COLUMN, kind="mergesort") if TIME_COLUMN in df.columns else df
            self._frames[device] = (frame if limit is None else frame.head(limit)).reset_index(drop=True)
        self._features = tuple(feature_names)
        self._client = MqttClient(
            BrokerAddress.parse(broker_url),
            client_id or f"fedforge-replay-{uuid.uuid4().hex[:12]}",
            persistent=False,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unacked: deque[int] = deque()
        self._error: BaseException | None = None
        self.stats = ReplayStats(per_device=dict.fromkeys(self._frames, 0))

    # -- payloads ---------------------------------------------------------------------

    def _ingest_payload(self, device: str, start: int, stop: int) -> bytes:
        frame = self._frames[device].iloc[start:stop]
        if self.wire_format == "records":
            records = to_ingest_records(frame, self._features)
            return json.dumps(records, separators=(",", ":"), allow_nan=False).encode("utf-8")
        ids, times, values = ingest_columns(frame, self._features, infinite=self.wire_format == "binary")
        if self.wire_format == "packed":  # a NaN goes out as null (orjson writes no NaN literal)
            return packed_ingest_bytes(self._features, ids, times.tolist(), values.tolist())
        return binary_ingest_bytes(self._features, ids, times, values)

    def _labels_payload(self, device: str, start: int, stop: int) -> bytes | None:
        frame = self._frames[device].iloc[start:stop]
        if LABEL_COLUMN not in frame.columns or frame.empty:
            return None
        labels = tuple(
            Label(record_id=str(rid), label=1 if int(y) else 0)
            for rid, y in zip(frame[ID_COLUMN], frame[LABEL_COLUMN], strict=True)
        )
        return LabelBatch(labels=labels).to_bytes()

    # -- publishing -------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes) -> None:
        if len(payload) > MAX_JSON_PAYLOAD_BYTES:
            log.warning("%d-byte message to %s exceeds the agents' limit; lower the batch size", len(payload), topic)
        self._unacked.append(self._client.publish(topic, payload, qos=topics.QOS_AT_LEAST_ONCE))
        while len(self._unacked) > MAX_UNACKED:
            self._wait_ack(self._unacked.popleft())

    def _wait_ack(self, mid: int) -> None:
        if not self._client.wait_published(mid, ACK_TIMEOUT_S):
            raise MqttError(f"broker {self._client.broker.url} did not acknowledge a publish in {ACK_TIMEOUT_S} s")

    def _replay(self) -> None:
        sizes = {device: len(frame) for device, frame in self._frames.items()}
        began = time.monotonic()
        for event in schedule(sizes, self.rate, self.batch, self.label_delay):
            wait = began + event.at - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            if self._stop.is_set():
                break
            if event.kind == "ingest":
                self._publish(
                    topics.ingest(self.fleet, event.device), self._ingest_payload(event.device, event.start, event.stop)
                )
                count = event.stop - event.start
                self.stats.records += count
                self.stats.messages += 1
                self.stats.per_device[event.device] += count
            else:
                payload = self._labels_payload(event.device, event.start, event.stop)
                if payload is None:
                    continue
                self._publish(topics.labels(self.fleet, event.device), payload)
                self.stats.label_batches += 1
                self.stats.labels += event.stop - event.start
            self.stats.seconds = time.monotonic() - began
        while self._unacked:
            self._wait_ack(self._unacked.popleft())
        self.stats.seconds = time.monotonic() - began
        self.stats.done = not self._stop.is_set()

    def _guarded(self) -> None:
        try:
            self._replay()
        except Exception as exc:  # re-raised by run()/wait(); a background thread must not die silently
            log.exception("replay to fleet %s failed", self.fleet)
            self._error = exc
        finally:
            self._client.stop()

    # -- lifecycle --------------------------------------------------------------------

    def run(self, until_done: bool = True) -> ReplayStats:
        """Replay everything; with ``until_done=False`` start in the background and return at once."""
        self._client.start()
        if until_done:
            self._guarded()
            self._raise_error()
            return self.stats
        self._thread = threading.Thread(target=self._guarded, name=f"replay-{self.fleet}", daemon=True)
        self._thread.start()
        return self.stats

    def wait(self, timeout: float | None = None) -> ReplayStats:
        """Join a background replay; raises what made it fail."""
        if self._thread is not None:
            self._thread.join(timeout)
        self._raise_error()
        return self.stats

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
