"""Remote settings: a signed config is checked against the local settings, kept, and applied."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.remote_config import (
    RemoteConfig,
    RemoteSettings,
    load_remote_settings,
    merged,
    remote_settings_path,
    save_remote_settings,
    with_remote_settings,
)
from shared.commands import command_signed_fields, config_command
from shared.errors import ConfigError
from shared.schemas import Command, CommandAck
from shared.signing import TrustStore, sign
from tests.edge_agent.conftest import Keys


@pytest.fixture
def local(tmp_path: Path, operator_keys: Keys) -> AgentSettings:
    return AgentSettings(
        device_id="dev1", fleet="f1", data_dir=tmp_path / "agent", trusted_keys=[operator_keys.public_path]
    )


class Rig:
    def __init__(self, local: AgentSettings, keys: Keys) -> None:
        self.keys = keys
        self.acks: list[CommandAck] = []
        self.restarts = 0
        self.config = RemoteConfig(
            local,
            TrustStore.from_files([keys.public_path]),
            on_ack=self.acks.append,
            request_restart=self._restart,
            serving_version=lambda: 3,
        )

    def _restart(self) -> None:
        self.restarts += 1

    def command(
        self, settings: dict[str, object], *, command_id: str = "c1", now: float = 1000.0, **kw: str
    ) -> Command:
        return config_command(
            self.keys.private,
            command_id=command_id,
            fleet=kw.get("fleet", "f1"),
            task="fraud",
            device_id=kw.get("device_id", "dev1"),
            settings=settings,
            issued_by="ops",
            ttl_s=1e10,  # issued at t=1000 s: still valid now
            now=now,
        )

    def send(self, command: Command) -> CommandAck:
        self.config.on_command(command)
        return self.acks[-1]


@pytest.fixture
def rig(local: AgentSettings, operator_keys: Keys) -> Rig:
    return Rig(local, operator_keys)


def test_a_config_is_kept_acknowledged_and_applied_by_a_restart(rig: Rig, local: AgentSettings) -> None:
    ack = rig.send(rig.command({"heartbeat_s": 2.5, "federation_mode": "always"}))
    assert (ack.accepted, ack.kind, ack.serving_version) == (True, "config", 3)
    assert ack.reason == "applied federation_mode='always', heartbeat_s=2.5: restarting"
    assert rig.restarts == 1
    settings = with_remote_settings(local)
    assert (settings.heartbeat_s, settings.federation_mode) == (2.5, "always")
    assert settings.device_id == local.device_id
    # Redelivered after the restart (it is retained): acknowledged, not applied again.
    again = rig.send(rig.command({"heartbeat_s": 2.5, "federation_mode": "always"}))
    assert (again.accepted, again.reason, rig.restarts) == (True, "already applied", 1)


def test_an_empty_config_returns_the_device_to_its_local_settings(rig: Rig, local: AgentSettings) -> None:
    rig.send(rig.command({"heartbeat_s": 2.5}))
    ack = rig.send(rig.command({}, command_id="c2", now=2000.0))
    assert ack.accepted
    assert rig.restarts == 2
    assert with_remote_settings(local) == local


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"heartbeat_s": -1}, "invalid settings: heartbeat_s: Input should be greater than 0"),
        ({"max_batch": "many"}, "invalid settings: max_batch: Input should be a valid integer"),
        (
            {"federation_mode": "sometimes"},
            "invalid settings: federation_mode: Input should be 'always' or 'on_demand'",
        ),
    ],
)
def test_a_value_the_agent_would_refuse_at_start_is_refused_now(
    rig: Rig, local: AgentSettings, settings: dict[str, object], reason: str
) -> None:
    ack = rig.send(rig.command(settings))
    assert not ack.accepted
    assert ack.reason.startswith(reason), ack.reason
    assert rig.restarts == 0
    assert not remote_settings_path(local.data_dir).exists()


def test_identity_keys_and_paths_are_never_remote(rig: Rig, local: AgentSettings) -> None:
    with pytest.raises(ValueError, match="not remote settings: broker_url"):
        rig.command({"broker_url": "mqtt://evil:1883"})
    # Signed all the same (a server that would not check): the agent refuses it.
    unsigned = Command(
        command_id="c9",
        kind="config",
        expires_at=1e12,
        device_id="dev1",
        settings={"trusted_keys": ["/tmp/evil.pub"]},
        fleet="f1",
        task="fraud",
        issued_at=1000.0,
        signer=rig.command({}).signer,
    )
    forged = unsigned.model_copy(update={"signature": sign(rig.keys.private, command_signed_fields(unsigned))})
    ack = rig.send(forged)
    assert (ack.accepted, ack.reason) == (False, "settings an operator may not set remotely: trusted_keys")
    assert not remote_settings_path(local.data_dir).exists()


def test_another_devices_a_tampered_or_a_stale_config_is_refused(rig: Rig) -> None:
    assert "for device dev2, this is dev1" in rig.send(rig.command({}, device_id="dev2")).reason
    tampered = rig.command({"heartbeat_s": 1.0}).model_copy(update={"settings": {"heartbeat_s": 0.01}})
    assert "signature does not match" in rig.send(tampered).reason
    assert rig.send(rig.command({"heartbeat_s": 3.0}, command_id="new", now=2000.0)).accepted
    stale = rig.send(rig.command({"heartbeat_s": 9.0}, command_id="old", now=1500.0))
    assert (stale.accepted, stale.reason) == (False, "stale: command new was issued after it")
    assert rig.restarts == 1


def test_remote_settings_that_no_longer_fit_are_set_aside_not_fatal(
    local: AgentSettings, caplog: pytest.LogCaptureFixture
) -> None:
    save_remote_settings(local.data_dir, RemoteSettings("c1", 1.0, {"disk_budget_mb": -5}))
    with caplog.at_level(logging.ERROR):
        assert with_remote_settings(local) == local
    assert "do not apply: disk_budget_mb" in caplog.text
    remote_settings_path(local.data_dir).write_text("{not json")
    assert load_remote_settings(local.data_dir) is None
    assert with_remote_settings(local) == local


def test_merged_refuses_names_that_are_not_remote(local: AgentSettings) -> None:
    with pytest.raises(ConfigError, match="device_id"):
        merged(local, {"device_id": "someone-else"})
    assert merged(local, {}) is local


def test_every_remote_setting_is_an_agent_setting_and_none_is_identity_or_trust() -> None:
    """The server signs configs by the shared list: a name the agent lacks would only be refused on the device."""
    from shared.commands import REMOTE_SETTINGS

    assert REMOTE_SETTINGS.issubset(AgentSettings.model_fields)
    local_only = {"device_id", "fleet", "task", "broker_url", "data_dir", "trusted_keys", "supernode_key"}
    local_only |= {name for name in AgentSettings.model_fields if name.startswith(("mqtt_", "superlink_"))}
    assert not REMOTE_SETTINGS & local_only
