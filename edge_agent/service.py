"""The agent process: one asyncio loop around MQTT, cleaning, the store, scoring and updates.

The MQTT link runs on the agent's loop (``shared.mqtt``'s loop mode): the loop watches the
socket, reads it on the loop thread (whole buffers, PUBLISH packets decoded by
``shared.mqtt.wire``), and the messages of one readable event are collected by
``_on_message`` and handled together by ``_after_read`` before their acknowledgements are
written. No thread hands messages to another, so a message costs no wake-up and no GIL
hand-over, and what the broker hears acknowledged has been committed to the store (or
quarantined). While the loop works nothing more is read, which is the back-pressure: the
broker holds what the agent has not taken yet.

Cleaning, storing and ONNX scoring work on micro-batches: consecutive ingest payloads are
cleaned together (``edge_agent.pipeline.clean_payloads``: values checked as one array, the
store asked once for duplicates), then stored, scored and published ``max_batch`` records at
a time, each step one call for the whole chunk, and all the chunks of one flush (up to
``FLUSH_BYTES`` of payloads) in one transaction: a commit per chunk cost about 1 µs a record.
Every message is handled inside a try/except: an unexpected error quarantines that payload
with the reason and the agent keeps running.

Federation (``edge_agent.federation``) plugs in as *companions*: objects with
``async start()`` / ``async stop()``, started after the agent is up and stopped before it
goes down (``Agent(settings, companions=[...])`` or ``agent.add_companion(...)``).

Prediction batches go through the on-disk outbox (``edge_agent.outbox``): a crash or a
broker outage delays them, never loses them. A chunk's records, its outbox entry and its
predictions commit together, and the message is published after the commit. A
housekeeping task re-sends the outbox after a reconnect and keeps the store inside its disk
budget (``edge_agent.store.budget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from edge_agent.config import AgentSettings
from edge_agent.drift import DriftMonitor
from edge_agent.housekeeping import Housekeeping
from edge_agent.metrics import AgentFigures, AgentMetrics
from edge_agent.models import ModelManager
from edge_agent.mqtt import AgentLink
from edge_agent.outbox import Outbox
from edge_agent.pipeline import CleanBatch, CleanRecord, Quarantined, clean_payload, clean_payloads
from edge_agent.quarantine_log import QuarantineLog
from edge_agent.store import AgentStore, BatchScores, ScoredRecord, SqliteAgentStore, StoreUnavailableError
from edge_agent.telemetry import AgentCounters, LatencyWindow
from shared.errors import ConfigError, FedforgeError, PayloadError
from shared.features import FeatureSpec
from shared.process import reap_orphans
from shared.schemas import (
    Command,
    CommandAck,
    Counters,
    DeviceStatus,
    LabelBatch,
    decode,
    prediction_batch_bytes,
)
from shared.signing import TrustStore
from shared.tasks.catalog import base_feature_spec

log = logging.getLogger(__name__)

Message = tuple[str, bytes]
StatusKind = Literal["birth", "heartbeat", "offline"]


class Companion(Protocol):
    """Something that runs beside the agent (e.g. the flower-supernode supervisor)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# Ingest payload bytes cleaned together at most: one readable event can bring a thousand
# messages, and cleaning them in one go was slower per record (the decoded values of 12,500
# records no longer stay in cache: 7-8 against 4-6 µs per record in bench_ingest's 3b/3c).
FLUSH_BYTES = 256 * 1024
# How often the agent reaps helpers of its SuperNode trees that died after their parent.
ORPHAN_REAP_S = 5.0


@dataclass(slots=True)
class _Pending:
    ingest: list[bytes] = field(default_factory=list)  # cleaned together at the flush
    ingest_bytes: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Scored:
    publish: Callable[[], None]  # the outbox entry's publish step
    scores: BatchScores


def load_trust(settings: AgentSettings) -> TrustStore:
    try:
        return TrustStore.from_files(settings.trusted_keys)
    except (OSError, FedforgeError) as exc:
        raise ConfigError(f"cannot load trusted keys: {exc}") from None


def builtin_spec(task: str) -> FeatureSpec:
    """The task's base FeatureSpec, from the torch-free task catalog."""
    return base_feature_spec(task)


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        store: AgentStore | None = None,
        feature_spec: FeatureSpec | None = None,
        companions: Sequence[Companion] = (),
    ) -> None:
        self.settings = settings
        self.trust = load_trust(settings)
        self._own_store = store is None
        self.store: AgentStore = store if store is not None else SqliteAgentStore(settings.db_path)
        self._fallback_spec = feature_spec or self._configured_spec()
        self.link = AgentLink(
            settings.broker_url, settings.fleet, settings.device_id, settings.task, tls=settings.mqtt_tls()
        )
        self.companions: list[Companion] = list(companions)
        self.counters = AgentCounters.from_store_counts(self.store.counts())
        self.latency = LatencyWindow(1000)
        self.drift = DriftMonitor()
        self.quarantine_log = QuarantineLog()
        self.metrics = AgentMetrics(self._figures)
        self._outbox_depth = 0  # refreshed with each status; the metrics thread must not touch the store
        self._drift_score: float | None = None  # likewise: the drift window belongs to the loop thread
        self.models = ModelManager(
            settings,
            self.store,
            self.trust,
            self.link,
            on_change=self._on_model_change,
            on_chunk=self._on_message,
            on_ack=self._publish_ack,
        )
        self.slot = self.models.slot
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._inbox: list[Message] = []  # what the current readable event delivered
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.outbox = Outbox(self.store, self.link.publish_tracked, self._call_soon, max_rows=settings.outbox_max_rows)
        self.housekeeping = Housekeeping(settings, self.store, self.link, self.outbox, self.counters)

    def _configured_spec(self) -> FeatureSpec | None:
        path = self.settings.feature_spec_path
        if path is None:
            return None
        try:
            return FeatureSpec.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"invalid feature_spec_path {path}: {exc}") from None

    def add_companion(self, companion: Companion) -> None:
        self.companions.append(companion)

    @property
    def spec(self) -> FeatureSpec:
        """Cleaning uses the serving model's spec; before any model, the configured one."""
        loaded = self.slot.current
        if loaded is not None:
            return loaded.manifest.feature_spec
        if self._fallback_spec is None:
            self._fallback_spec = builtin_spec(self.settings.task)
        return self._fallback_spec

    @property
    def queue_depth(self) -> int:
        """Messages read but not handled yet (only ever non-zero inside one readable event)."""
        return len(self._inbox)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.models.load_from_disk()
        _ = self.spec  # fail early (ConfigError) when no spec can be found
        await self.link.start_on_loop(self._on_message, self._after_read)
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
        self._started = True
        self.housekeeping.resend_after_start()
        self._publish_status("birth")
        self._score_backlog()
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="agent-heartbeat"),
            asyncio.create_task(self._tick(), name="agent-updater-tick"),
            asyncio.create_task(self.housekeeping.run(), name="agent-housekeeping"),
        ]
        for companion in self.companions:
            await companion.start()
        log.info(
            "agent %s/%s started (model %s)", self.settings.fleet, self.settings.device_id, self._version() or "none"
        )

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for companion in reversed(self.companions):
            try:
                await companion.stop()
            except Exception:
                log.exception("companion %r failed to stop", companion)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # Messages still arriving are handled (and acknowledged) as usual until the link stops.
        await self.housekeeping.settle_outbox()
        loop = asyncio.get_running_loop()
        try:
            mid = self._publish_status("offline")
            if mid is not None:
                await loop.run_in_executor(None, self.link.wait_published, mid, 5.0)
        finally:
            await self.link.stop_on_loop()
            self.metrics.stop()
            if self._own_store:
                self.store.close()
        log.info("agent %s/%s stopped", self.settings.fleet, self.settings.device_id)

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set or SIGTERM/SIGINT arrives (when on the main thread)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread: the caller owns signals
        try:
            await self.start()
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    # -- the link's I/O (on the loop) ------------------------------------------------------

    def _call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread, after the current callback; dropped when the loop is
        gone (the outbox keeps the row)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(fn)
            return
        with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
            loop.call_soon_threadsafe(fn)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self._inbox.append((topic, payload))

    def _after_read(self) -> None:
        """The messages of one readable event, handled before the link acknowledges them."""
        batch, self._inbox = self._inbox, []
        if batch:
            self.handle_batch(batch)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            self._publish_status("heartbeat")

    async def check_disk_budget(self) -> None:
        await self.housekeeping.check_disk_budget()

    async def _tick(self) -> None:
        period = max(0.05, min(1.0, self.settings.download_timeout_s / 4))
        next_reap = 0.0
        while True:
            await asyncio.sleep(period)
            self.models.tick()
            if self.companions and time.monotonic() >= next_reap:
                # The agent is the subreaper of its SuperNode trees: late helpers end up here.
                next_reap = time.monotonic() + ORPHAN_REAP_S
                for pid in reap_orphans():
                    log.info("reaped orphaned helper process %d", pid)

    # -- message handling (loop thread) -----------------------------------------------------

    def handle_batch(self, batch: Sequence[Message]) -> None:
        """Handle messages in arrival order; ingest is cleaned, stored and scored in micro-batches."""
        pending = _Pending()
        for topic, payload in batch:
            try:
                if topic == self.link.ingest_topic:
                    pending.ingest.append(payload)
                    pending.ingest_bytes += len(payload)
                    if pending.ingest_bytes >= FLUSH_BYTES:
                        self._flush(pending)
                        pending = _Pending()
                elif topic == self.link.labels_topic:
                    self._handle_labels(payload, pending)
                else:
                    self._flush(pending)
                    pending = _Pending()
                    self._handle_control(topic, payload)
            except StoreUnavailableError:
                raise  # nothing of this batch is acknowledged: the broker delivers it again
            except Exception as exc:
                log.exception("failed to handle a message on %s", topic)
                pending.quarantined.append(Quarantined(None, f"internal error on {topic}: {exc!r}"[:500], payload))
        self._flush(pending)

    def _clean(self, payloads: list[bytes]) -> tuple[CleanBatch, list[Quarantined]]:
        spec = self.spec
        try:
            result = clean_payloads(payloads, spec, self.store.known_ids)
            return result.accepted, result.quarantined
        except Exception:
            log.exception("batched cleaning failed; cleaning the %d payloads one by one", len(payloads))
        # One payload at a time, each in its own try: a bug costs only the payload that hits it.
        accepted: list[CleanRecord] = []
        quarantined: list[Quarantined] = []
        ids: set[str] = set()
        for payload in payloads:
            try:
                one = clean_payload(payload, spec, lambda rid: rid in ids or self.store.has_record(rid))
            except Exception as exc:
                quarantined.append(Quarantined(None, f"internal error while cleaning: {exc!r}"[:500], payload))
                continue
            accepted.extend(one.accepted)
            quarantined.extend(one.quarantined)
            ids.update(r.record_id for r in one.accepted)
        return CleanBatch.from_records(accepted, spec.width), quarantined

    def _handle_labels(self, payload: bytes, pending: _Pending) -> None:
        try:
            batch = decode(LabelBatch, payload)
        except PayloadError as exc:
            pending.quarantined.append(Quarantined(None, f"labels: {exc}", payload))
            return
        self.counters.labelled += self.store.add_labels([(lb.record_id, lb.label) for lb in batch.labels])

    def _flush(self, pending: _Pending) -> None:
        """Quarantine and store what ``pending`` holds in one transaction (a chunk that fails is
        rolled back alone, to its savepoint), then publish the chunks' predictions."""
        accepted: CleanBatch | None = None
        quarantined = pending.quarantined
        if pending.ingest:
            accepted, cleaning_quarantined = self._clean(pending.ingest)
            quarantined = quarantined + cleaning_quarantined
        publishes: list[Callable[[], None]] = []
        try:
            with self.store.atomic():
                if accepted is not None:
                    for chunk in accepted.chunks(self.settings.max_batch):
                        try:
                            publishes.append(self._store_and_score(chunk))
                        except StoreUnavailableError:
                            raise
                        except Exception as exc:  # a bug, not the disk: keep the records in quarantine
                            log.exception("storing a chunk of %d records failed", len(chunk))
                            reason = f"internal error while storing: {exc!r}"[:500]
                            quarantined = quarantined + chunk.quarantined(self.spec.names, reason)
                if quarantined:
                    self.store.quarantine(quarantined)
        except StoreUnavailableError as exc:
            log.error("%s: %d ingest payloads left unacknowledged with the broker", exc, len(pending.ingest))
            raise
        except Exception:
            log.exception("storing a batch failed (%d records)", 0 if accepted is None else len(accepted))
            return
        if quarantined:
            self.counters.quarantined += len(quarantined)
            self.quarantine_log.add(quarantined)
            for q in quarantined[:3]:
                log.info("quarantined %s: %s", q.record_id or "payload", q.reason)
        for publish in publishes:
            publish()

    def _store_and_score(self, chunk: CleanBatch) -> Callable[[], None]:
        """Scored first, then the records stored with their predictions and the outbox entry,
        inside the caller's transaction: one write per record, and no crash can keep the records
        but lose the prediction message. Returns what publishes it, for after the commit."""
        with self.store.atomic():
            try:
                scored = self._score_batch(chunk, stored=False)
            except Exception:
                # The records are kept all the same, unscored: the backlog scores them later.
                log.exception("scoring a batch of %d records failed", len(chunk))
                scored = None
            new = self.store.add_batch(chunk, None if scored is None else scored.scores)
        counters = self.counters
        counted = len(new)

        def publish() -> None:
            counters.ingested += counted
            if scored is not None:
                counters.scored += counted
                scored.publish()

        return publish

    def _score(self, records: Sequence[CleanRecord]) -> int:
        """Score stored records (the backlog: their widths may differ from the model's)."""
        loaded = self.slot.current
        if loaded is None or not records:
            return 0
        width = loaded.scorer.width
        usable = [r for r in records if len(r.values) == width]
        if len(usable) != len(records):
            log.warning("%d stored records do not fit model width %d", len(records) - len(usable), width)
        if not usable:
            return 0
        scored = self._score_batch(CleanBatch.from_records(usable, width), stored=True)
        return 0 if scored is None else len(usable)

    def _score_batch(self, batch: CleanBatch, *, stored: bool) -> _Scored | None:
        """Score ``batch`` and write its outbox entry; None when no model fits it.

        Records already ``stored`` (the backlog) get their predictions and the message is
        published now; otherwise the caller stores the records with the returned scores and
        publishes after its transaction commits."""
        loaded = self.slot.current  # one reference for the whole batch, even across a swap
        if loaded is None or len(batch) == 0:
            return None
        if batch.width != loaded.scorer.width:
            width = loaded.scorer.width
            log.warning("%d records of width %d do not fit model width %d", len(batch), batch.width, width)
            return None
        started = time.perf_counter()
        raw = loaded.scorer.score_raw(batch.values)
        elapsed = time.perf_counter() - started
        self.latency.add_batch(elapsed, len(batch))
        self.metrics.scoring_latency.observe(elapsed / len(batch))
        threshold = self.settings.alert_threshold
        values = raw.tolist()
        alerts = [s >= threshold for s in values]
        message = prediction_batch_bytes(self.settings.device_id, loaded.version, batch.record_ids, values, alerts)
        # Outbox row first: outside a transaction, a crash before the predictions are stored
        # re-sends the batch and re-scores the records (duplicates are harmless); the other
        # order could lose the batch for good.
        publish = self.outbox.write(self.link.predictions_topic, message, batch.record_ids)
        if stored:
            scored = [ScoredRecord(*row) for row in zip(batch.record_ids, values, alerts, strict=True)]
            self.store.add_predictions(loaded.version, scored)
        self.drift.observe(loaded.version, loaded.manifest.feature_spec, batch.values)
        if stored:
            self.counters.scored += len(batch)
            publish()
        return _Scored(publish, BatchScores(loaded.version, values, alerts))

    def _score_backlog(self) -> None:
        """Score what was stored while no model (or a model of another width) was serving."""
        if self.slot.current is None:
            return
        total = 0
        try:
            while True:
                records = self.store.unscored_records(self.settings.max_batch)
                done = self._score(records)
                total += done
                if done == 0 or len(records) < self.settings.max_batch:
                    break
        except Exception:
            log.exception("scoring the backlog failed")
        if total:
            log.info("scored a backlog of %d stored records", total)

    def _handle_control(self, topic: str, payload: bytes) -> None:
        if topic == self.link.manifest_topic:
            self.models.on_manifest(payload)
        elif topic in (self.link.commands_topic, self.link.fleet_commands_topic):
            self._handle_command(payload)
        else:
            self.models.on_chunk_topic(topic, payload)

    def _handle_command(self, payload: bytes) -> None:
        if not payload:
            return  # the cloud cleared the fleet's standing command
        try:
            command = decode(Command, payload)
        except PayloadError as exc:
            log.warning("ignoring an invalid command: %s", exc)
            return
        if command.kind == "rollback":
            self.models.on_command(command)  # verifies (signature, expiry, fleet, task) and acks
            return
        if command.expires_at < time.time():
            log.info("ignoring expired command %s", command.command_id)
            return
        log.warning("command %s (%s) is not supported by this agent", command.command_id, command.kind)
        self._publish_ack(
            CommandAck(
                command_id=command.command_id,
                device_id=self.settings.device_id,
                kind=command.kind,
                version=command.version,
                accepted=False,
                reason=f"unsupported command kind {command.kind!r}",
                serving_version=self._version(),
                ts=time.time(),
            )
        )

    def _publish_ack(self, ack: CommandAck) -> None:
        try:
            self.link.publish_ack(ack)
        except Exception:
            log.exception("publishing the ack of command %s failed", ack.command_id)

    # -- status -------------------------------------------------------------------------------

    def _version(self) -> int | None:
        return self.models.version

    def _on_model_change(self, installed: bool) -> None:
        """After an install or a rejection: tell the cloud, then score what waited."""
        if not installed:
            self.counters.models_rejected += 1
        self._publish_status("heartbeat")
        if installed:
            self._score_backlog()

    def status(self, kind: StatusKind) -> DeviceStatus:
        self._seq += 1
        c = self.counters
        try:
            trained = self.store.trained_examples()
        except Exception:
            trained = 0
        try:
            outbox_depth = self._outbox_depth = self.outbox.depth()
        except Exception:
            outbox_depth = 0
        version = self._version()
        health: Literal["ok", "degraded", "offline"] = (
            "offline" if kind == "offline" else ("ok" if version is not None else "degraded")
        )
        drift = self.drift.drift()
        self._drift_score = None if drift is None else drift.score
        return DeviceStatus(
            device_id=self.settings.device_id,
            fleet=self.settings.fleet,
            kind=kind,
            ts=time.time(),
            seq=self._seq,
            model_version=version,
            signature_verified=version is not None,  # only verified models are ever served
            health=health,
            counters=Counters(
                ingested=c.ingested,
                quarantined=c.quarantined,
                scored=c.scored,
                labelled=c.labelled,
                trained=trained,
                models_rejected=c.models_rejected,
            ),
            queue_depth=self.queue_depth,
            outbox_depth=outbox_depth,
            scoring_latency_ms_p50=self.latency.p50(),
            last_rejection=self.models.last_rejection,
            drift=drift,
            recent_quarantine=self.quarantine_log.recent(),
        )

    def _figures(self) -> AgentFigures:
        c = self.counters
        return AgentFigures(
            ingested=c.ingested,
            quarantined=c.quarantined,
            scored=c.scored,
            labelled=c.labelled,
            models_rejected=c.models_rejected,
            serving_version=self._version(),
            outbox_depth=self._outbox_depth,
            queue_depth=self.queue_depth,
            drift_score=self._drift_score,
        )

    def _publish_status(self, kind: StatusKind) -> int | None:
        try:
            return self.link.publish_status(self.status(kind))
        except Exception:
            log.exception("publishing status failed")
            return None


async def run_agent(
    settings: AgentSettings, stop: asyncio.Event | None = None, companions: Sequence[Companion] = ()
) -> None:
    """Run one agent until ``stop`` is set or the process gets SIGTERM/SIGINT."""
    await Agent(settings, companions=companions).run_forever(stop)
