"""Follows the fleet over MQTT: device status into the registry, chunk re-requests answered.

paho calls the handlers on its network thread, which must never block, so they only put
messages on a bounded queue; one worker thread decodes them and does the registry I/O.
Bad payloads are logged and counted, never raised: one broken agent cannot stop the
server from following the others. A status is written to two stores (the device row and the
telemetry history); a write either refuses is counted in ``store_errors`` with its reason,
and the other is still made.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from server.registry.records import AckRecord, Registry
from server.registry.telemetry import TelemetryStore
from server.release.publisher import publish_chunks
from server.telemetry.ingest import TelemetryWriteError, failure_reason, record_status
from shared import topics
from shared.errors import FedforgeError, TopicError
from shared.mqtt import BrokerAddress, MqttClient, TlsKwargs
from shared.schemas import ChunkRequest, CommandAck, DeviceStatus, ModelManifest, decode

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
# Bounds the work one request can cause: a hostile agent cannot make us resend a 10k-chunk model forever.
MAX_CHUNKS_PER_REQUEST = 4096


def server_client(broker_url: str, fleet: str, tls: TlsKwargs | None = None) -> MqttClient:
    """The server's one MQTT client: stable id + persistent session, so no status is missed across restarts."""
    return MqttClient(
        BrokerAddress.parse(broker_url), f"fedforge-server-{fleet}", persistent=True, **(tls or TlsKwargs())
    )


@dataclass
class MonitorStats:
    received: int = 0
    statuses: int = 0
    malformed: int = 0
    dropped: int = 0
    chunk_requests: int = 0
    chunks_resent: int = 0
    acks: int = 0
    revoked_ignored: int = 0
    # Valid statuses a store refused (in part): the device row, the telemetry point or samples.
    store_errors: int = 0


@dataclass(frozen=True)
class _Message:
    kind: str  # "status" | "request" | "ack"
    topic: str
    payload: bytes
    retained: bool
    received_at: float


_STOP = _Message("stop", "", b"", False, 0.0)


class FleetMonitor:
    def __init__(
        self, client: MqttClient, registry: Registry, fleet: str, task: str, telemetry: TelemetryStore | None = None
    ) -> None:
        self.client = client
        self.registry = registry
        self.telemetry = telemetry
        self.fleet = fleet
        self.task = task
        self.stats = MonitorStats()
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=QUEUE_SIZE)
        self._worker: threading.Thread | None = None
        self._artifact_cache: tuple[int, ModelManifest, bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Start the worker, then subscribe (the client may be started before or after)."""
        if self._worker is not None:
            return
        self._worker = threading.Thread(target=self._run, name=f"fleet-monitor-{self.fleet}", daemon=True)
        self._worker.start()
        self.client.subscribe(topics.all_status_filter(self.fleet), self._on_status, qos=1)
        self.client.subscribe(topics.all_requests_filter(self.fleet), self._on_request, qos=1)
        self.client.subscribe(topics.all_acks_filter(self.fleet), self._on_ack, qos=1)

    def stop(self, timeout: float = 10.0) -> None:
        if self._worker is None:
            return
        self.client.unsubscribe(topics.all_status_filter(self.fleet))
        self.client.unsubscribe(topics.all_requests_filter(self.fleet))
        self.client.unsubscribe(topics.all_acks_filter(self.fleet))
        self._queue.put(_STOP)
        self._worker.join(timeout)
        self._worker = None

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message is handled (for orderly shutdown and tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._queue.unfinished_tasks == 0

    # -- paho thread: enqueue only ------------------------------------------------
    def _enqueue(self, kind: str, topic: str, payload: bytes, retained: bool) -> None:
        self.stats.received += 1
        try:
            self._queue.put_nowait(_Message(kind, topic, payload, retained, time.time()))
        except queue.Full:
            self.stats.dropped += 1
            log.warning("fleet monitor queue full; dropped a message on %s", topic)

    def _on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        self._enqueue("status", topic, payload, retained)

    def _on_request(self, topic: str, payload: bytes, retained: bool) -> None:
        self._enqueue("request", topic, payload, retained)

    def _on_ack(self, topic: str, payload: bytes, retained: bool) -> None:
        self._enqueue("ack", topic, payload, retained)

    # -- worker thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            msg = self._queue.get()
            try:
                if msg is _STOP:
                    return
                if msg.kind == "status":
                    self._handle_status(msg)
                elif msg.kind == "ack":
                    self._handle_ack(msg)
                else:
                    self._handle_request(msg)
            except FedforgeError as exc:
                self.stats.malformed += 1
                log.warning("ignored message on %s: %s", msg.topic, exc)
            except Exception:
                # A registry outage or a bug must not end the worker: log and carry on.
                log.exception("failed to handle message on %s", msg.topic)
            finally:
                self._queue.task_done()

    def _device_of(self, topic: str) -> str:
        parsed = topics.parse(topic)
        if parsed.kind != "device" or parsed.device is None or parsed.fleet != self.fleet:
            raise TopicError(f"unexpected topic {topic!r}")
        return parsed.device

    def _handle_status(self, msg: _Message) -> None:
        if not msg.payload:
            return  # an operator cleared the retained status; nothing to record
        device = self._device_of(msg.topic)
        status = decode(DeviceStatus, msg.payload)
        if status.device_id != device or status.fleet != self.fleet:
            raise TopicError(
                f"status for {status.fleet}/{status.device_id} published on the topic of {self.fleet}/{device}"
            )
        known = self.registry.get_device(device)
        if known is not None and known.revoked:
            self.stats.revoked_ignored += 1
            log.debug("ignored the status of revoked device %s", device)
            return
        stored = True
        try:
            self.registry.upsert_device_status(status, received_at=msg.received_at, retained=msg.retained)
        except Exception as exc:  # the telemetry below is its own store: still write it
            stored = False
            self.stats.store_errors += 1
            log.error("status of %s not stored in the registry: %s", device, failure_reason(exc))
        if self.telemetry is not None:
            try:
                record_status(self.telemetry, status, msg.received_at, msg.retained)
            except TelemetryWriteError as exc:
                stored = False
                self.stats.store_errors += 1
                log.error("%s", exc)
        if stored:
            self.stats.statuses += 1

    def _handle_ack(self, msg: _Message) -> None:
        if not msg.payload:
            return
        device = self._device_of(msg.topic)
        ack = decode(CommandAck, msg.payload)
        if ack.device_id != device:
            raise TopicError(f"ack from {ack.device_id} published on the topic of {device}")
        known = self.registry.get_device(device)
        if known is not None and known.revoked:
            self.stats.revoked_ignored += 1
            return
        self.registry.record_ack(
            AckRecord(ack.command_id, device, ack.accepted, ack.reason, ack.serving_version, msg.received_at)
        )
        self.stats.acks += 1
        verdict = "accepted" if ack.accepted else "rejected"
        log.info("device %s %s command %s (%s)", device, verdict, ack.command_id, ack.reason)

    def _handle_request(self, msg: _Message) -> None:
        if msg.retained or not msg.payload:
            return  # a stale retained request is not a live need
        device = self._device_of(msg.topic)
        known = self.registry.get_device(device)
        if known is not None and known.revoked:
            self.stats.revoked_ignored += 1
            log.info("refused a chunk request of revoked device %s", device)
            return
        request = decode(ChunkRequest, msg.payload)
        if request.device_id != device:
            raise TopicError(f"chunk request for {request.device_id} published on the topic of {device}")
        if request.task != self.task:
            raise TopicError(f"chunk request for unknown task {request.task!r}")
        loaded = self._load(request.version)
        if loaded is None:
            log.info("device %s asked for %s v%d, which is not published", device, request.task, request.version)
            return
        manifest, artifact = loaded
        wanted: list[int] = []
        for first, last in request.missing:
            lo, hi = max(0, first), min(last, manifest.chunk_count - 1)
            wanted.extend(range(lo, hi + 1))
            if len(wanted) >= MAX_CHUNKS_PER_REQUEST:
                break
        indices = sorted(set(wanted))[:MAX_CHUNKS_PER_REQUEST]
        self.stats.chunk_requests += 1
        self.stats.chunks_resent += publish_chunks(self.client, self.fleet, manifest, artifact, indices)
        log.info("resent %d chunks of %s v%d for %s", len(indices), request.task, request.version, device)

    def _load(self, version: int) -> tuple[ModelManifest, bytes] | None:
        cached = self._artifact_cache
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        record = self.registry.get_model_version(self.task, version)
        if record is None or record.stage != "published":
            return None
        artifact = self.registry.get_artifact(self.task, version)
        if artifact is None:
            return None
        manifest = ModelManifest.model_validate(record.manifest)
        self._artifact_cache = (version, manifest, artifact)
        return manifest, artifact
