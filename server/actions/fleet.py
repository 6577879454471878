"""``FleetActions``: what an operator may do to the fleet, each step audited with the principal.

Release rules (docs/api.md "Rollouts"):
- promote v: v becomes the release; it must be newer than the current release (an older
  one is a rollback). A version withdrawn by an earlier rollback is re-released with a
  signed command as well, because agents that rolled back refuse it by manifest.
- rollback to v: v must be an earlier released version. Every newer published version
  is withdrawn, v is published again (retained manifest + chunks) and a rollback command
  signed with the operator key is retained on the fleet's command topic. Agents verify it
  and switch to v; their acknowledgements come back on their ``acks`` topic.
- revoke a device: its status is no longer followed, it is left out of rollout shares,
  and with node authentication its SuperNode key is unregistered (no more training).
- pin a device to v: v must be released (stage published). A signed pin for that device
  alone is retained on its command topic; it serves v and ignores every release until
  unpinned. Unpin: a signed unpin carrying the current release, which the device serves.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.actions.channel import ReleaseChannel
from server.config import ServerSettings
from server.errors import NotFoundError, ServerError
from server.federation.catalog import STRATEGY_NAMES, is_strategy
from server.registry.records import CommandRecord, ModelVersionRecord, Registry, Stage
from shared.commands import (
    DeviceCommandKind,
    NotRemoteSettingsError,
    config_command,
    device_command,
    rollback_command,
)
from shared.mqtt import MqttError
from shared.schemas import Command, ModelManifest

log = logging.getLogger(__name__)


class ActionConflictError(ServerError):
    """The action contradicts the fleet's state (HTTP 409): e.g. promoting the current release."""


class ActionUnavailableError(ServerError):
    """This server cannot carry the action out now (HTTP 503): no broker link, no run launcher."""


class RunStarter(Protocol):
    def __call__(self, run_id: str, rounds: int, strategy: str, min_agents: int) -> str:
        """Submit a training run; returns Flower's run id."""
        ...


class FleetActions:
    def __init__(
        self,
        settings: ServerSettings,
        registry: Registry,
        *,
        channel: ReleaseChannel | None,
        signing_key: Callable[[], Ed25519PrivateKey] | None,
        run_starter: RunStarter | None = None,
        unregister_node: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.channel = channel
        self._signing_key = signing_key
        self.run_starter = run_starter
        # (device_id, actor) -> unregisters the device's Flower node key; None without node auth.
        self.unregister_node = unregister_node
        self._clock = clock
        self._lock = threading.Lock()  # one release decision at a time

    @property
    def task(self) -> str:
        return self.settings.task

    def _channel(self) -> ReleaseChannel:
        if self.channel is None:
            raise ActionUnavailableError("this server has no broker link: the fleet cannot be reached")
        return self.channel

    def _version(self, version: int) -> tuple[ModelVersionRecord, bytes]:
        record = self.registry.get_model_version(self.task, version)
        artifact = None if record is None else self.registry.get_artifact(self.task, version)
        if record is None or artifact is None:
            raise NotFoundError(f"model version {version} of task {self.task!r} not found")
        return record, artifact

    # -- promote and roll back ------------------------------------------------------
    def promote(self, version: int, actor: str) -> dict[str, Any]:
        with self._lock:
            record, artifact = self._version(version)
            channel = self._channel()
            current = self.registry.latest_published(self.task)
            if current is not None and version == current.version:
                raise ActionConflictError(f"v{version} is already the release")
            if current is not None and version < current.version:
                raise ActionConflictError(
                    f"v{version} is older than the release v{current.version}: use POST /api/fleet/rollback"
                )
            manifest = ModelManifest.model_validate(record.manifest)
            command_id = None
            with self._undone_if_unsent({version: record.stage}):
                self.registry.set_stage(self.task, version, "published")
                if record.stage == "withdrawn":
                    command_id = self._standing_command(manifest, actor, channel)
                else:
                    channel.publish_fleet_command(b"")  # a newer release ends any standing rollback
                channel.publish_release(manifest, artifact)
            detail = {
                "task": self.task,
                "version": version,
                "previous_release": current.version if current else None,
                "previous_stage": record.stage,
                "command_id": command_id,
            }
            self.registry.audit(actor, "model.promoted", detail)
            log.info("%s promoted %s v%d", actor, self.task, version)
            return detail

    def rollback(self, version: int, actor: str) -> dict[str, Any]:
        with self._lock:
            record, artifact = self._version(version)
            channel = self._channel()
            current = self.registry.latest_published(self.task)
            if current is None or version >= current.version:
                release = f"v{current.version}" if current else "none"
                raise ActionConflictError(f"a rollback needs a version older than the release ({release})")
            if record.stage not in ("published", "withdrawn"):
                raise ActionConflictError(f"v{version} was never released (stage {record.stage}): promote it instead")
            withdrawn = [
                m.version
                for m in self.registry.list_model_versions(self.task)
                if m.stage == "published" and m.version > version
            ]
            manifest = ModelManifest.model_validate(record.manifest)
            with self._undone_if_unsent({**dict.fromkeys(withdrawn, "published"), version: record.stage}):
                for newer in withdrawn:
                    self.registry.set_stage(self.task, newer, "withdrawn")
                self.registry.set_stage(self.task, version, "published")
                # The release first (new agents install v by manifest), then the command (running agents switch).
                channel.publish_release(manifest, artifact)
                command_id = self._standing_command(manifest, actor, channel)
            detail = {
                "task": self.task,
                "version": version,
                "from_version": current.version,
                "withdrawn": withdrawn,
                "command_id": command_id,
                "sha256": manifest.sha256,
            }
            self.registry.audit(actor, "fleet.rollback", detail)
            log.info("%s rolled %s back from v%d to v%d (%s)", actor, self.task, current.version, version, command_id)
            return detail

    @contextmanager
    def _undone_if_unsent(self, stages: dict[int, Stage]) -> Iterator[None]:
        """Put ``stages`` back when the broker does not confirm what the action publishes.

        The stages are set first because the fleet monitor serves chunk re-requests by
        stage; without the undo an unacknowledged publish would leave the registry saying
        "released" to a fleet that never heard of it, and the retry refused as a conflict.
        What did reach the broker is published again, the same, by the retry.
        """
        try:
            yield
        except MqttError as exc:
            for version, stage in stages.items():
                self.registry.set_stage(self.task, version, stage)
            log.warning("the broker did not confirm a release action (%s): stages restored", exc)
            raise ActionUnavailableError(
                f"the broker did not confirm the publish ({exc}): nothing changed, retry"
            ) from exc

    def _standing_command(self, manifest: ModelManifest, actor: str, channel: ReleaseChannel) -> str:
        if self._signing_key is None:
            raise ActionUnavailableError("no operator signing key: a rollback cannot be authorised")
        command = rollback_command(
            self._signing_key(),
            command_id=f"rb-{uuid.uuid4().hex[:12]}",
            fleet=self.settings.fleet,
            manifest=manifest,
            issued_by=actor,
            ttl_s=self.settings.command_ttl_s,
            now=self._clock(),
        )
        channel.publish_fleet_command(command.to_bytes())
        self._record_command(command, actor)  # only a command the broker took
        return command.command_id

    def _record_command(self, command: Command, actor: str) -> None:
        self.registry.add_command(
            CommandRecord(
                command_id=command.command_id,
                fleet=self.settings.fleet,
                task=self.task,
                kind=command.kind,
                version=command.version,
                issued_at=command.issued_at,
                expires_at=command.expires_at,
                issued_by=actor,
                payload=command.model_dump(mode="json", exclude={"manifest"}),
            )
        )

    # -- pins -----------------------------------------------------------------------
    def pin_device(self, device_id: str, version: int, actor: str) -> dict[str, Any]:
        """Hold one device at a released version, whatever the fleet's release does next."""
        with self._lock:
            self._device(device_id)
            record, _artifact = self._version(version)
            if record.stage != "published":
                raise ActionConflictError(
                    f"v{version} is not released (stage {record.stage}): a device can be pinned to a published version"
                )
            manifest = ModelManifest.model_validate(record.manifest)
            detail = self._device_command("pin", device_id, manifest, actor)
            self.registry.audit(actor, "device.pinned", detail)
            log.info("%s pinned %s to %s v%d", actor, device_id, self.task, version)
            return detail

    def unpin_device(self, device_id: str, actor: str) -> dict[str, Any]:
        """Let a device follow the fleet again: it serves the current release (if any)."""
        with self._lock:
            self._device(device_id)
            release = self.registry.latest_published(self.task)
            manifest = None if release is None else ModelManifest.model_validate(release.manifest)
            detail = self._device_command("unpin", device_id, manifest, actor)
            self.registry.audit(actor, "device.unpinned", detail)
            log.info("%s unpinned %s (release %s)", actor, device_id, detail["version"])
            return detail

    # -- remote settings ------------------------------------------------------------
    def configure_device(self, device_id: str, settings: dict[str, Any], actor: str) -> dict[str, Any]:
        """Set a device's remote settings (all of them: ``{}`` returns it to its local ones).

        The server checks the names; the agent checks the values against its own settings
        and answers with an ack (accepted, then it restarts to apply them; or the reason).
        """
        with self._lock:
            self._device(device_id)
            channel = self._channel()
            try:
                command = config_command(
                    self._key("config"),
                    command_id=f"config-{uuid.uuid4().hex[:12]}",
                    fleet=self.settings.fleet,
                    task=self.task,
                    device_id=device_id,
                    settings=settings,
                    issued_by=actor,
                    ttl_s=self.settings.command_ttl_s,
                    now=self._clock(),
                )
            except NotRemoteSettingsError as exc:
                raise ActionConflictError(str(exc)) from None
            self._send(command, actor, lambda payload: channel.publish_device_config(device_id, payload))
            detail = {"device_id": device_id, "settings": settings, "command_id": command.command_id}
            self.registry.audit(actor, "device.configured", detail)
            log.info("%s configured %s: %s", actor, device_id, settings)
            return detail

    def _key(self, kind: str) -> Ed25519PrivateKey:
        if self._signing_key is None:
            raise ActionUnavailableError(f"no operator signing key: a {kind} cannot be authorised")
        return self._signing_key()

    def _send(self, command: Command, actor: str, publish: Callable[[bytes], None]) -> None:
        """Publish a device's command, then record it: the registry lists only what the broker took."""
        try:
            publish(command.to_bytes())
        except MqttError as exc:
            raise ActionUnavailableError(f"the broker did not confirm the {command.kind} ({exc}): retry") from exc
        self._record_command(command, actor)

    def _device(self, device_id: str) -> None:
        device = self.registry.get_device(device_id)
        if device is None or device.fleet != self.settings.fleet:
            raise NotFoundError(f"device {device_id!r} not found in fleet {self.settings.fleet!r}")
        if device.revoked:
            raise ActionConflictError(f"device {device_id!r} is revoked")

    def _device_command(
        self, kind: DeviceCommandKind, device_id: str, manifest: ModelManifest | None, actor: str
    ) -> dict[str, Any]:
        channel = self._channel()
        command = device_command(
            self._key(kind),
            kind=kind,
            command_id=f"{kind}-{uuid.uuid4().hex[:12]}",
            fleet=self.settings.fleet,
            task=self.task,
            device_id=device_id,
            manifest=manifest,
            issued_by=actor,
            ttl_s=self.settings.command_ttl_s,
            now=self._clock(),
        )
        self._send(command, actor, lambda payload: channel.publish_device_command(device_id, payload))
        return {"device_id": device_id, "task": self.task, "version": command.version, "command_id": command.command_id}

    # -- devices --------------------------------------------------------------------
    def revoke_device(self, device_id: str, actor: str) -> dict[str, Any]:
        device = self.registry.get_device(device_id)
        if device is None or device.fleet != self.settings.fleet:
            raise NotFoundError(f"device {device_id!r} not found in fleet {self.settings.fleet!r}")
        if device.revoked:
            raise ActionConflictError(f"device {device_id!r} is already revoked")
        self.registry.set_device_revoked(device_id, True)
        node_auth = "off"
        if self.unregister_node is not None:
            try:
                self.unregister_node(device_id, actor)
                node_auth = "unregistered"
            except ServerError as exc:
                node_auth = f"not unregistered: {exc}"
                log.warning("revoking %s: its node key was not unregistered: %s", device_id, exc)
        detail = {"device_id": device_id, "node_auth": node_auth}
        self.registry.audit(actor, "device.revoked", detail)
        return detail

    # -- training -------------------------------------------------------------------
    def start_run(self, rounds: int, strategy: str, min_agents: int, actor: str) -> dict[str, Any]:
        if not is_strategy(strategy):
            raise ActionConflictError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGY_NAMES)}")
        if self.run_starter is None:
            raise ActionUnavailableError("this server cannot launch training runs (start it with --config)")
        now = self._clock()
        # A run that died without finishing stays "running" in the registry: only a recent one blocks.
        running = [
            r.run_id
            for r in self.registry.list_runs()
            if r.status == "running" and now - r.started < self.settings.run_lifetime_s(r.rounds)
        ]
        if running:
            raise ActionConflictError(f"training run {running[0]} is still running")
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        flower_run_id = self.run_starter(run_id, rounds, strategy, min_agents)
        detail = {
            "run_id": run_id,
            "flower_run_id": flower_run_id,
            "rounds": rounds,
            "strategy": strategy,
            "min_agents": min_agents,
        }
        self.registry.audit(actor, "run.started", detail)
        return detail
