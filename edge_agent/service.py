"""The agent process: one asyncio loop around MQTT, cleaning, the store, scoring and updates.

The MQTT link runs on the agent's loop (``shared.mqtt``'s loop mode): the loop watches the
socket, reads it on the loop thread (whole buffers, PUBLISH packets decoded by
``shared.mqtt.wire``), and the messages of one readable event are collected by
``_on_message`` and handled together by ``_after_read`` before their acknowledgements are
written. No thread hands messages to another, so a message costs no wake-up and no GIL
hand-over, and what the broker hears acknowledged has been committed to the store (or
quarantined). While the loop works nothing more is read, which is the back-pressure: the
broker holds what the agent has not taken yet.

Each read's messages go to ``edge_agent.ingest.Ingest`` (cleaning, storing, scoring and
publishing micro-batches), which hands the control topics (manifest, model chunks,
commands) back to the agent; an unexpected error quarantines the payload with the reason
and the agent keeps running.

Federation (``edge_agent.federation``) plugs in as *companions*: objects with
``async start()`` / ``async stop()``, started after the agent is up and stopped before it
goes down (``Agent(settings, companions=[...])`` or ``agent.add_companion(...)``).

Prediction batches go through the on-disk outbox (``edge_agent.outbox``): a crash or a
broker outage delays them, never loses them. A housekeeping task re-sends the outbox after
a reconnect and keeps the store inside its disk budget (``edge_agent.store.budget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from edge_agent.config import AgentSettings
from edge_agent.housekeeping import Housekeeping
from edge_agent.ingest import Ingest, Message
from edge_agent.metrics import AgentFigures, AgentMetrics
from edge_agent.models import ModelManager
from edge_agent.mqtt import AgentLink
from edge_agent.outbox import Outbox
from edge_agent.remote_config import RemoteConfig
from edge_agent.store import AgentStore, SqliteAgentStore
from edge_agent.telemetry import AgentCounters
from shared.errors import ConfigError, FedforgeError
from shared.features import FeatureSpec
from shared.process import reap_orphans
from shared.schemas import Command, CommandAck, Counters, DeviceStatus, decode
from shared.signing import TrustStore

log = logging.getLogger(__name__)

StatusKind = Literal["birth", "heartbeat", "offline"]


class Companion(Protocol):
    """Something that runs beside the agent (e.g. the flower-supernode supervisor)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# How often the agent reaps helpers of its SuperNode trees that died after their parent.
ORPHAN_REAP_S = 5.0


def load_trust(settings: AgentSettings) -> TrustStore:
    try:
        return TrustStore.from_files(settings.trusted_keys)
    except (OSError, FedforgeError) as exc:
        raise ConfigError(f"cannot load trusted keys: {exc}") from None


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        store: AgentStore | None = None,
        feature_spec: FeatureSpec | None = None,
        companions: Sequence[Companion] = (),
        local_settings: AgentSettings | None = None,
    ) -> None:
        self.settings = settings
        # Set by a config command: the entry point starts the agent again with its remote settings.
        self.restart_requested = False
        self._stop_event: asyncio.Event | None = None
        self.trust = load_trust(settings)
        self._own_store = store is None
        self.store: AgentStore = store if store is not None else SqliteAgentStore(settings.db_path)
        fallback_spec = feature_spec or self._configured_spec()  # a ConfigError before anything starts
        self.link = AgentLink(
            settings.broker_url, settings.fleet, settings.device_id, settings.task, tls=settings.mqtt_tls()
        )
        self.companions: list[Companion] = list(companions)
        self.counters = AgentCounters.from_store_counts(self.store.counts())
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
        # ``local_settings``: the agent's own (TOML, environment), which a config is checked against.
        self.remote_config = RemoteConfig(
            local_settings or settings,
            self.trust,
            on_ack=self._publish_ack,
            request_restart=self._request_restart,
            serving_version=self._version,
        )
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._inbox: list[Message] = []  # what the current readable event delivered
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.outbox = Outbox(
            self.store,
            self.link.publish_tracked,
            self._call_soon,
            max_rows=settings.outbox_max_rows,
            schedule_later=self._call_later,
        )
        self.housekeeping = Housekeeping(settings, self.store, self.link, self.outbox, self.counters)
        self.ingest = Ingest(
            settings,
            self.store,
            self.slot,
            fallback_spec=fallback_spec,
            ingest_topic=self.link.ingest_topic,
            labels_topic=self.link.labels_topic,
            write_predictions=lambda message, ids: self.outbox.write(self.link.predictions_topic, message, ids),
            control=self._handle_control,
            counters=self.counters,
            metrics=self.metrics,
        )

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
    def queue_depth(self) -> int:
        """Messages read but not handled yet (only ever non-zero inside one readable event)."""
        return len(self._inbox)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.models.load_from_disk()
        self.models.load_pin()
        _ = self.ingest.spec  # fail early (ConfigError) when no spec can be found
        await self.link.start_on_loop(self._on_message, self._after_read)
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
        self._started = True
        self.housekeeping.resend_after_start()
        self._publish_status("birth")
        self.ingest.score_backlog()
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
            self.outbox.forget_acked()  # no acknowledgement can come any more
            self.metrics.stop()
            if self._own_store:
                self.store.close()
        log.info("agent %s/%s stopped", self.settings.fleet, self.settings.device_id)

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set or SIGTERM/SIGINT arrives (when on the main thread)."""
        stop = stop or asyncio.Event()
        self._stop_event = stop
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

    def _call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop after ``delay`` seconds (called on the loop thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_later(delay, fn)

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
            try:
                self.models.tick()
            except Exception:  # a bug here must not end the resumes and timeouts of every download
                log.exception("the model download tick failed")
            if self.companions and time.monotonic() >= next_reap:
                # The agent is the subreaper of its SuperNode trees: late helpers end up here.
                next_reap = time.monotonic() + ORPHAN_REAP_S
                for pid in reap_orphans():
                    log.info("reaped orphaned helper process %d", pid)

    # -- message handling (loop thread) -----------------------------------------------------

    def handle_batch(self, batch: Sequence[Message]) -> None:
        """One read's messages, in arrival order; ``StoreUnavailableError`` gets out, so the link
        acknowledges none of them (tests wrap this to act between the read and its acks)."""
        self.ingest.handle_batch(batch)

    def _handle_control(self, topic: str, payload: bytes) -> None:
        if topic == self.link.manifest_topic:
            self.models.on_manifest(payload)
        elif topic in (self.link.commands_topic, self.link.fleet_commands_topic, self.link.config_topic):
            self._handle_command(payload)
        else:
            self.models.on_chunk_topic(topic, payload)

    def _handle_command(self, payload: bytes) -> None:
        if not payload:
            return  # the cloud cleared the fleet's standing command
        command = decode(Command, payload)  # PayloadError: quarantined with its reason (Ingest)
        # Every kind the wire allows is handled; each verifies (signature, expiry, fleet, task,
        # device) and answers with an ack.
        if command.kind == "config":
            self.remote_config.on_command(command)  # records the settings, may ask for a restart
        else:
            self.models.on_command(command)  # rollback, pin, unpin

    def _request_restart(self) -> None:
        """Stop cleanly (the ack goes out first); ``run_forever``'s caller starts the agent again."""
        self.restart_requested = True
        if self._stop_event is not None:
            self._stop_event.set()

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
            self.ingest.score_backlog()

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
        drift = self.ingest.drift.drift()
        self._drift_score = None if drift is None else drift.score
        return DeviceStatus(
            device_id=self.settings.device_id,
            fleet=self.settings.fleet,
            kind=kind,
            ts=time.time(),
            seq=self._seq,
            model_version=version,
            pinned_version=self.models.pinned,
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
            scoring_latency_ms_p50=self.ingest.latency.p50(),
            last_rejection=self.models.last_rejection,
            drift=drift,
            recent_quarantine=self.ingest.quarantine_log.recent(),
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
