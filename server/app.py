"""Wiring of the ``fedforge server`` process: registry, MQTT, bootstrap model, companions, HTTP.

Start order: migrate -> registry -> MQTT client + fleet monitor -> model v1 if none ->
companions (e.g. the SuperLink supervisor) -> uvicorn. Stop order is the reverse, after
uvicorn returns (it handles SIGINT/SIGTERM itself and drains requests first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.actions import FleetActions, MqttReleaseChannel, RunStarter
from server.api.app import auth_service_for, create_app
from server.config import ServerSettings
from server.mqtt.fleet_monitor import FleetMonitor, server_client
from server.registry.auth_sql import SqlAuthStore
from server.registry.migrate import migrate
from server.registry.records import Registry
from server.registry.sql import SqlRegistry
from server.registry.telemetry import TelemetryStore
from server.registry.telemetry_sql import SqlTelemetryStore
from shared.mqtt import MqttClient
from shared.signing import key_id, load_private_key, write_keypair

log = logging.getLogger(__name__)

HTTP_SHUTDOWN_GRACE_S = 5


class Companion(Protocol):
    """Anything the server runs beside the API; ``start`` must return once it is running."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def ensure_signing_key(settings: ServerSettings) -> Ed25519PrivateKey:
    """Load the operator key, creating a pair on first start (demo); the private file is 0600."""
    if settings.signing_key.is_file():
        key = load_private_key(settings.signing_key)
    else:
        key = write_keypair(settings.signing_key, settings.signing_public_key)
        log.warning(
            "created a new operator signing key at %s; agents must trust %s",
            settings.signing_key,
            settings.signing_public_key,
        )
    log.info("signing as operator key %s", key_id(key.public_key()))
    return key


def ensure_bootstrap_model(
    settings: ServerSettings, registry: Registry, client: MqttClient | None, signing_key: Ed25519PrivateKey
) -> int | None:
    """Train and release v1 when nothing is published yet and bootstrap data is configured.

    torch is imported here, lazily, so a server without bootstrap data never loads it.
    """
    latest = registry.latest_published(settings.task)
    if latest is not None:
        return latest.version
    if settings.bootstrap_data is None or settings.holdout_data is None:
        log.info("no published model and no bootstrap/holdout data configured: waiting for a training run")
        return None
    from server.release.release import release_model
    from server.training.bootstrap import train_bootstrap_model
    from server.training.checkpoints import save_state
    from server.training.data import load_frame, model_inputs

    boot, holdout = load_frame(settings.bootstrap_data), load_frame(settings.holdout_data)
    model, spec, metrics = train_bootstrap_model(
        boot, holdout, settings.bootstrap_epochs, settings.seed, device=settings.device
    )
    manifest = release_model(
        registry,
        client,
        signing_key,
        model,
        spec,
        metrics,
        None,
        "bootstrap",
        model_inputs(spec, holdout),
        fleet=settings.fleet,
        task=settings.task,
        public_url=settings.public_url,
    )
    save_state(settings.data_dir, settings.task, manifest.version, model.state_dict())
    return manifest.version


def flower_run_starter(settings: ServerSettings, config_path: Path, client: MqttClient | None = None) -> RunStarter:
    """Training runs from the API go the way `fedforge train` sends them: the fleet is called
    (on the server's own MQTT client), then `flwr run` submits the run to our SuperLink."""

    def start(run_id: str, rounds: int, strategy: str, min_agents: int) -> str:
        from server.federation.calls import submit_called_run

        log.info("submitting training run %s (%s, %d rounds, >= %d agents)", run_id, strategy, rounds, min_agents)
        return submit_called_run(settings, config_path, run_id, rounds, min_agents, strategy, client)

    return start


def node_unregistrar(settings: ServerSettings, registry: Registry) -> Callable[[str, str], None] | None:
    """With node auth, revoking a device unregisters the node key registered under its name."""
    if not settings.supernode_auth:
        return None

    def unregister(device_id: str, actor: str) -> None:
        from server.federation.node_auth import ACTION_REGISTER, ACTION_UNREGISTER, NodeAuthError, unregister_device

        for entry in registry.list_audit(100_000):
            if entry.action in (ACTION_REGISTER, ACTION_UNREGISTER) and entry.detail.get("name") == device_id:
                if entry.action == ACTION_UNREGISTER:
                    break
                node_id, fingerprint = str(entry.detail["node_id"]), entry.detail.get("fingerprint")
                unregister_device(settings, registry, node_id, fingerprint=fingerprint, actor=actor)
                return
        raise NodeAuthError(f"no node key registered under the name {device_id!r} (fedforge devices register --name)")

    return unregister


@dataclass
class ServerService:
    settings: ServerSettings
    companions: list[Companion] = field(default_factory=list)
    # The settings file the server was started with: the ServerApp of API-started runs reads it.
    config_path: Path | None = None
    registry: Registry | None = None
    client: MqttClient | None = None
    monitor: FleetMonitor | None = None
    telemetry: TelemetryStore | None = None
    signing_key: Ed25519PrivateKey | None = None
    _server: uvicorn.Server | None = None
    _started: list[Companion] = field(default_factory=list)
    _stop_requested: bool = False

    def open(self) -> Registry:
        """Migrate and open the SQL registry (idempotent)."""
        if self.registry is None:
            migrate(self.settings.database_url)
            registry = SqlRegistry(self.settings.database_url)
            self.telemetry = SqlTelemetryStore(registry.engine)
            self.registry = registry
        return self.registry

    def start_background(self) -> None:
        """Everything but HTTP: registry, MQTT, model v1, companions."""
        s = self.settings
        registry = self.open()
        key = self.signing_key = ensure_signing_key(s)
        self.client = server_client(s.broker_url, s.fleet, tls=s.mqtt_tls())
        self.monitor = FleetMonitor(self.client, registry, s.fleet, s.task, telemetry=self.telemetry)
        self.monitor.start()
        self.client.start()
        if registry.latest_published(s.task) is not None:
            # A broker without persistence forgets retained releases when it restarts.
            from server.release.release import republish_latest

            republish_latest(registry, self.client, s.fleet, s.task)
        ensure_bootstrap_model(s, registry, self.client, key)
        for companion in self.companions:
            companion.start()
            self._started.append(companion)

    def actions(self) -> FleetActions:
        assert self.registry is not None
        key = self.signing_key
        return FleetActions(
            self.settings,
            self.registry,
            channel=None if self.client is None else MqttReleaseChannel(self.client, self.settings.fleet),
            signing_key=None if key is None else (lambda: key),
            run_starter=None
            if self.config_path is None
            else flower_run_starter(self.settings, self.config_path, self.client),
            unregister_node=node_unregistrar(self.settings, self.registry),
        )

    def stop_background(self) -> None:
        """Reverse order; a failing stop is logged so the rest still stop."""
        while self._started:
            companion = self._started.pop()
            try:
                companion.stop()
            except Exception:
                log.exception("companion %r failed to stop", companion)
        if self.monitor is not None:
            self.monitor.drain(5.0)
            self.monitor.stop()
            self.monitor = None
        if self.client is not None:
            self.client.stop()
            self.client = None
        if self.registry is not None:
            self.registry.close()
            self.registry = None
            self.telemetry = None

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then shut everything down in reverse order."""
        with self._signals():
            try:
                await asyncio.to_thread(self.start_background)
                assert self.registry is not None
                auth_store = SqlAuthStore(self.registry.engine) if isinstance(self.registry, SqlRegistry) else None
                auth = None if auth_store is None else auth_service_for(self.settings, auth_store, self.registry)
                app = create_app(self.settings, self.registry, auth, self.actions(), telemetry=self.telemetry)
                config = uvicorn.Config(
                    app,
                    host=self.settings.http_host,
                    port=self.settings.http_port,
                    log_level="info",
                    lifespan="off",
                    # Dashboards hold event streams open: requests still running after this are cancelled.
                    timeout_graceful_shutdown=HTTP_SHUTDOWN_GRACE_S,
                )
                self._server = uvicorn.Server(config)
                if self._stop_requested:
                    return
                log.info("API on http://%s:%d", self.settings.http_host, self.settings.http_port)
                await self._server.serve()
            finally:
                await asyncio.to_thread(self.stop_background)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Benign SIGINT/SIGTERM handlers around the whole run.

        uvicorn captures the signals while serving and, on its way out, re-raises them at
        the handler that was there before; with the default handlers that would kill the
        process before companions and the MQTT client are stopped. Ours only ask to stop.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stop_requested:
            log.info("received %s; shutting down", signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        """Ask uvicorn to exit (for embedding and tests; signals do the same)."""
        self._stop_requested = True
        if self._server is not None:
            self._server.should_exit = True


async def serve(
    settings: ServerSettings, extra: list[Companion] | None = None, config_path: Path | None = None
) -> None:
    await ServerService(settings, list(extra or []), config_path).run()


def run_server(settings: ServerSettings, extra: list[Companion] | None = None, config_path: Path | None = None) -> int:
    """Blocking entry point for ``server.cli``; returns the exit code."""
    asyncio.run(serve(settings, extra, config_path))
    return 0
