"""The operator's remote settings: a signed ``config`` command, kept on disk, applied by a restart.

The agent's settings are built once, in its entry point, and passed down: nothing re-reads
them while it runs. So a config command is verified, checked against the local settings
(a value the agent would refuse at start is refused now, with the reason), written to
``data_dir/remote-settings.json`` and acknowledged; then the agent stops cleanly and its
entry point starts it again with the remote settings over the local ones (TOML and
environment). A config names every remote setting the operator wants: an empty one returns
the device to its local settings. Identity, broker, keys and paths are never remote
(``shared.commands.REMOTE_SETTINGS``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.config import AgentSettings
from shared.commands import REMOTE_SETTINGS, verify_config_command
from shared.errors import BundleError, ConfigError
from shared.fileio import atomic_write_bytes
from shared.schemas import Command, CommandAck
from shared.signing import TrustStore

log = logging.getLogger(__name__)

REMOTE_SETTINGS_FILE = "remote-settings.json"


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """The last config applied: its settings, and its id and issue time (older ones are stale)."""

    command_id: str
    issued_at: float
    settings: dict[str, Any]


def remote_settings_path(data_dir: Path) -> Path:
    return data_dir / REMOTE_SETTINGS_FILE


def load_remote_settings(data_dir: Path) -> RemoteSettings | None:
    """None when no config was ever applied, or the file is unreadable (the retained config comes again)."""
    path = remote_settings_path(data_dir)
    try:
        raw = json.loads(path.read_bytes())
        settings = raw["settings"]
        if not isinstance(settings, dict):
            raise TypeError("settings is not an object")
        return RemoteSettings(str(raw["command_id"]), float(raw["issued_at"]), settings)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.error("%s is unreadable (%s): running on the local settings", path, exc)
        return None


def save_remote_settings(data_dir: Path, remote: RemoteSettings) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(remote_settings_path(data_dir), json.dumps(asdict(remote), sort_keys=True).encode())


def merged(local: AgentSettings, remote: dict[str, Any]) -> AgentSettings:
    """``local`` with ``remote`` over it, validated as at start; ``ConfigError`` with the reason."""
    unknown = sorted(set(remote) - REMOTE_SETTINGS)
    if unknown:
        raise ConfigError(f"settings an operator may not set remotely: {', '.join(unknown)}")
    if not remote:
        return local
    try:
        # Every field given: the environment and the TOML file cannot override what is passed.
        return type(local)(**{**local.model_dump(), **remote})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(problems) from None


def with_remote_settings(local: AgentSettings) -> AgentSettings:
    """The settings the agent runs with: the operator's remote ones over ``local``.

    Remote settings that no longer fit the local ones (the TOML file changed since) are set
    aside with an error in the log, never a refusal to start: the agent must stay reachable.
    """
    remote = load_remote_settings(local.data_dir)
    if remote is None or not remote.settings:
        return local
    try:
        settings = merged(local, remote.settings)
    except ConfigError as exc:
        log.error("the operator's remote settings (command %s) do not apply: %s", remote.command_id, exc)
        return local
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(remote.settings.items()))
    log.info("remote settings in effect (command %s): %s", remote.command_id, shown)
    return settings


class RemoteConfig:
    """Verifies and records ``config`` commands; asks the agent to restart when one changes something."""

    def __init__(
        self,
        local: AgentSettings,
        trust: TrustStore,
        *,
        on_ack: Callable[[CommandAck], None],
        request_restart: Callable[[], None],
        serving_version: Callable[[], int | None],
    ) -> None:
        self.local = local
        self.trust = trust
        self._on_ack = on_ack
        self._request_restart = request_restart
        self._serving_version = serving_version

    def on_command(self, command: Command) -> None:
        try:
            settings = verify_config_command(
                command, self.trust, fleet=self.local.fleet, task=self.local.task, device_id=self.local.device_id
            )
        except BundleError as exc:
            self._refuse(command, str(exc))
            return
        last = load_remote_settings(self.local.data_dir)
        if last is not None and command.command_id == last.command_id:
            self._ack(command, True, "already applied")  # a redelivery, e.g. after the restart it asked for
            return
        if last is not None and command.issued_at <= last.issued_at:
            self._refuse(command, f"stale: command {last.command_id} was issued after it")
            return
        try:
            merged(self.local, settings)
        except ConfigError as exc:
            self._refuse(command, f"invalid settings: {exc}")
            return
        try:
            save_remote_settings(self.local.data_dir, RemoteSettings(command.command_id, command.issued_at, settings))
        except OSError as exc:
            self._refuse(command, f"cannot record the settings: {exc}")
            return
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(settings.items())) or "the local settings"
        log.info("config %s: %s; restarting to apply it", command.command_id, shown)
        self._ack(command, True, f"applied {shown}: restarting")
        self._request_restart()

    def _refuse(self, command: Command, reason: str) -> None:
        log.warning("refused command %s: %s", command.command_id, reason)
        self._ack(command, False, reason)

    def _ack(self, command: Command, accepted: bool, reason: str) -> None:
        self._on_ack(
            CommandAck(
                command_id=command.command_id,
                device_id=self.local.device_id,
                kind=command.kind,
                version=None,
                accepted=accepted,
                reason=reason[:1000],
                serving_version=self._serving_version(),
                ts=time.time(),
            )
        )
