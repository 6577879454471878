"""FleetActions without a broker: release rules, signed commands, revoke, run validation, audit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.actions import ActionConflictError, ActionUnavailableError, FleetActions, InMemoryReleaseChannel
from server.config import ServerSettings
from server.errors import NotFoundError
from server.registry import InMemoryRegistry, ModelVersionRecord
from shared.commands import command_signed_fields, verify_config_command, verify_device_command, verify_rollback
from shared.errors import SignatureError
from shared.schemas import Command, DeviceStatus
from shared.signing import TrustStore, generate_private_key, sign

KEY = generate_private_key()
TRUST = TrustStore([KEY.public_key()])


def _record(version: int, stage: str) -> ModelVersionRecord:
    """A manifest dict good enough for ModelManifest (and its own signature)."""
    from shared.bundle import build_manifest
    from shared.features import FeatureSpec

    spec = FeatureSpec.from_names("fraud", ("a",), {"a": (-1.0, 1.0)}).fit(__import__("numpy").zeros((3, 1)))
    manifest = build_manifest(
        model_bytes=f"onnx{version}".encode() * 300,
        task="fraud",
        version=version,
        feature_spec=spec,
        input_name="x",
        output_name="y",
        signing_key=KEY,
        created=1000.0 + version,
    )
    from server.release.release import manifest_record

    record = manifest_record(manifest)
    return ModelVersionRecord(**{**record.__dict__, "stage": stage})


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FleetActions, InMemoryRegistry, InMemoryReleaseChannel]:
    registry = InMemoryRegistry()
    for version, stage in ((1, "published"), (2, "published"), (3, "candidate"), (4, "rejected")):
        registry.add_model_version(_record(version, stage), f"onnx{version}".encode() * 300)
    channel = InMemoryReleaseChannel()
    settings = ServerSettings(data_dir=tmp_path, fleet="f1", command_ttl_s=60.0)
    actions = FleetActions(settings, registry, channel=channel, signing_key=lambda: KEY, clock=lambda: 5000.0)
    return actions, registry, channel


def _stages(registry: InMemoryRegistry) -> dict[int, str]:
    return {m.version: m.stage for m in registry.list_model_versions("fraud")}


def test_promote_a_newer_candidate_publishes_it_and_clears_any_rollback(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, registry, channel = setup
    channel.command = b"stale"
    detail = actions.promote(3, "ops")
    assert detail["previous_release"] == 2
    assert _stages(registry)[3] == "published"
    assert channel.releases[-1].version == 3
    assert channel.command == b""
    assert registry.list_audit()[0].actor == "ops"
    assert registry.list_audit()[0].action == "model.promoted"


@pytest.mark.parametrize(("version", "error"), [(2, "already the release"), (1, "older than the release")])
def test_promote_refuses_the_release_and_older_versions(setup: tuple, version: int, error: str) -> None:  # type: ignore[type-arg]
    actions, _, channel = setup
    with pytest.raises(ActionConflictError, match=error):
        actions.promote(version, "ops")
    assert channel.releases == []


def test_rollback_withdraws_newer_versions_and_signs_a_command(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, registry, channel = setup
    detail = actions.rollback(1, "ops")
    assert detail["withdrawn"] == [2]
    assert _stages(registry) == {1: "published", 2: "withdrawn", 3: "candidate", 4: "rejected"}
    assert registry.latest_published("fraud").version == 1  # type: ignore[union-attr]
    assert channel.releases[-1].version == 1
    command = Command.model_validate_json(channel.command)
    manifest = verify_rollback(command, TRUST, fleet="f1", task="fraud", now=5001.0)
    assert (manifest.version, command.issued_by, command.expires_at) == (1, "ops", 5060.0)
    assert command.command_id == detail["command_id"]
    assert [c.command_id for c in registry.list_commands("f1")] == [command.command_id]
    assert registry.list_audit()[0].detail["from_version"] == 2


def test_a_tampered_or_expired_command_does_not_verify(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, _, channel = setup
    actions.rollback(1, "ops")
    command = Command.model_validate_json(channel.command)
    tampered = command.model_copy(update={"version": 2})
    with pytest.raises(SignatureError):
        verify_rollback(tampered, TRUST, fleet="f1", task="fraud", now=5001.0)
    with pytest.raises(Exception, match="expired"):
        verify_rollback(command, TRUST, fleet="f1", task="fraud", now=6000.0)
    with pytest.raises(Exception, match="this agent is other/fraud"):
        verify_rollback(command, TRUST, fleet="other", task="fraud", now=5001.0)
    rogue = generate_private_key()
    with pytest.raises(SignatureError):
        verify_rollback(command, TrustStore([rogue.public_key()]), fleet="f1", task="fraud", now=5001.0)
    unsigned = command.model_copy(update={"signature": sign(rogue, {"x": 1})})
    with pytest.raises(SignatureError):
        verify_rollback(unsigned, TRUST, fleet="f1", task="fraud", now=5001.0)


@pytest.mark.parametrize(
    ("version", "error"), [(2, "older than the release"), (3, "older than the release"), (9, None)]
)
def test_rollback_needs_an_older_released_version(setup: tuple, version: int, error: str | None) -> None:  # type: ignore[type-arg]
    actions, _, channel = setup
    with pytest.raises(NotFoundError if error is None else ActionConflictError):
        actions.rollback(version, "ops")
    assert channel.command == b""


def test_rollback_to_a_never_released_version_is_refused(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, registry, channel = setup
    actions.promote(3, "ops")
    registry.set_stage("fraud", 1, "rejected")  # older than the release, but the gate never let it out
    with pytest.raises(ActionConflictError, match="never released"):
        actions.rollback(1, "ops")
    assert _stages(registry)[3] == "published"
    assert channel.command == b""


def test_re_promoting_a_withdrawn_version_needs_a_signed_command(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, registry, channel = setup
    actions.rollback(1, "ops")
    detail = actions.promote(2, "ops")
    assert detail["previous_stage"] == "withdrawn"
    assert detail["command_id"] is not None
    assert Command.model_validate_json(channel.command).version == 2
    assert _stages(registry)[2] == "published"


def test_revoke_device(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, registry, _ = setup
    registry.upsert_device_status(DeviceStatus(device_id="d1", fleet="f1", kind="heartbeat", ts=1.0), received_at=1.0)
    registry.upsert_device_status(DeviceStatus(device_id="d2", fleet="f2", kind="heartbeat", ts=1.0), received_at=1.0)
    assert actions.revoke_device("d1", "ops") == {"device_id": "d1", "node_auth": "off"}
    assert registry.get_device("d1").revoked  # type: ignore[union-attr]
    # A later status keeps the device revoked.
    registry.upsert_device_status(DeviceStatus(device_id="d1", fleet="f1", kind="heartbeat", ts=2.0), received_at=2.0)
    assert registry.get_device("d1").revoked  # type: ignore[union-attr]
    with pytest.raises(ActionConflictError):
        actions.revoke_device("d1", "ops")
    with pytest.raises(NotFoundError):
        actions.revoke_device("d2", "ops")  # another fleet's device
    assert registry.list_audit()[0].action == "device.revoked"


def _device(registry: InMemoryRegistry, device_id: str, fleet: str = "f1") -> None:
    registry.upsert_device_status(
        DeviceStatus(device_id=device_id, fleet=fleet, kind="heartbeat", ts=1.0), received_at=1.0
    )


def test_pin_signs_a_command_for_that_device_alone(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, registry, channel = setup
    _device(registry, "d1")
    detail = actions.pin_device("d1", 1, "ops")
    assert (detail["device_id"], detail["version"]) == ("d1", 1)
    assert channel.command == b""  # nothing fleet-wide
    command = Command.model_validate_json(channel.device_commands["d1"])
    assert (command.kind, command.device_id, command.command_id) == ("pin", "d1", detail["command_id"])
    manifest = verify_device_command(command, TRUST, fleet="f1", task="fraud", device_id="d1", now=5001.0)
    assert manifest is not None
    assert manifest.version == 1
    # Signed with the device's id: replayed on another device's topic it is refused.
    with pytest.raises(Exception, match="for device d1, this is d2"):
        verify_device_command(command, TRUST, fleet="f1", task="fraud", device_id="d2", now=5001.0)
    with pytest.raises(SignatureError):
        verify_device_command(
            command.model_copy(update={"device_id": "d2"}), TRUST, fleet="f1", task="fraud", device_id="d2", now=5001.0
        )
    with pytest.raises(Exception, match="expired"):
        verify_device_command(command, TRUST, fleet="f1", task="fraud", device_id="d1", now=6000.0)
    with pytest.raises(Exception, match="not a rollback"):
        verify_rollback(command, TRUST, fleet="f1", task="fraud", now=5001.0)
    assert registry.list_commands("f1")[0].kind == "pin"
    assert (registry.list_audit()[0].action, registry.list_audit()[0].detail) == ("device.pinned", detail)


def test_unpin_carries_the_release(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, registry, channel = setup
    _device(registry, "d1")
    actions.pin_device("d1", 1, "ops")
    detail = actions.unpin_device("d1", "ops")
    command = Command.model_validate_json(channel.device_commands["d1"])  # the unpin replaces the pin
    assert (command.kind, command.version, detail["version"]) == ("unpin", 2, 2)
    manifest = verify_device_command(command, TRUST, fleet="f1", task="fraud", device_id="d1", now=5001.0)
    assert manifest is not None
    assert manifest.version == 2
    assert registry.list_audit()[0].action == "device.unpinned"


def test_an_unpin_without_a_release_names_no_version(tmp_path: Path) -> None:
    registry = InMemoryRegistry()
    _device(registry, "d1")
    channel = InMemoryReleaseChannel()
    settings = ServerSettings(data_dir=tmp_path, fleet="f1")
    FleetActions(settings, registry, channel=channel, signing_key=lambda: KEY).unpin_device("d1", "ops")
    command = Command.model_validate_json(channel.device_commands["d1"])
    assert verify_device_command(command, TRUST, fleet="f1", task="fraud", device_id="d1") is None


@pytest.mark.parametrize(
    ("device", "version", "error"),
    [
        ("d1", 3, ActionConflictError),  # a candidate: never released
        ("d1", 4, ActionConflictError),  # rejected by the gate
        ("d1", 9, NotFoundError),
        ("d2", 1, NotFoundError),  # another fleet's device
        ("nobody", 1, NotFoundError),
        ("gone", 1, ActionConflictError),  # revoked
    ],
)
def test_pin_needs_a_known_device_and_a_published_version(setup: tuple, device: str, version: int, error: type) -> None:  # type: ignore[type-arg]
    actions, registry, channel = setup
    _device(registry, "d1")
    _device(registry, "d2", fleet="f2")
    _device(registry, "gone")
    registry.set_device_revoked("gone", True)
    with pytest.raises(error):
        actions.pin_device(device, version, "ops")
    assert channel.device_commands == {}
    assert registry.list_commands("f1") == []


def test_a_config_is_signed_for_one_device_and_names_only_remote_settings(setup: tuple) -> None:  # type: ignore[type-arg]
    actions, registry, channel = setup
    _device(registry, "d1")
    detail = actions.configure_device("d1", {"heartbeat_s": 2.0, "federation_mode": "always"}, "ops")
    command = Command.model_validate_json(channel.device_configs["d1"])
    assert channel.device_commands == {}  # its own retained slot: a pending pin stays
    settings = verify_config_command(command, TRUST, fleet="f1", task="fraud", device_id="d1", now=5001.0)
    assert settings == {"heartbeat_s": 2.0, "federation_mode": "always"} == detail["settings"]
    assert registry.list_commands("f1")[0].kind == "config"
    assert registry.list_audit()[0].action == "device.configured"
    with pytest.raises(ActionConflictError, match="not remote settings: broker_url, device_id"):
        actions.configure_device("d1", {"broker_url": "mqtt://x", "device_id": "d2"}, "ops")
    with pytest.raises(NotFoundError):
        actions.configure_device("nobody", {}, "ops")
    assert len(registry.list_commands("f1")) == 1


def test_a_fleet_command_signs_no_device_field() -> None:
    # Commands signed before pins existed must still verify: the absent device is not signed.
    rollback = Command(command_id="c", kind="rollback", expires_at=1.0)
    assert "device_id" not in command_signed_fields(rollback)
    assert command_signed_fields(rollback.model_copy(update={"device_id": "d1"}))["device_id"] == "d1"


def test_start_run_validates_and_launches(setup: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    actions, registry, _ = setup
    with pytest.raises(ActionConflictError, match="unknown strategy"):
        actions.start_run(2, "fedmagic", 1, "ops")
    with pytest.raises(ActionUnavailableError):
        actions.start_run(2, "fedavg", 1, "ops")
    launched: list[tuple[str, int, str, int]] = []

    def starter(run_id: str, rounds: int, strategy: str, min_agents: int) -> str:
        launched.append((run_id, rounds, strategy, min_agents))
        registry.start_run(run_id, rounds, started=5000.0)
        return "77"

    actions.run_starter = starter
    detail = actions.start_run(2, "fedavg", 3, "ops")
    assert launched == [(detail["run_id"], 2, "fedavg", 3)]
    assert detail["flower_run_id"] == "77"
    with pytest.raises(ActionConflictError, match="still running"):
        actions.start_run(2, "fedavg", 3, "ops")
    assert registry.list_audit()[0].action == "run.started"


def test_without_a_broker_link_actions_are_unavailable(tmp_path: Path) -> None:
    registry = InMemoryRegistry()
    registry.add_model_version(_record(1, "published"), b"x" * 300)
    registry.add_model_version(_record(2, "candidate"), b"y" * 300)
    actions = FleetActions(ServerSettings(data_dir=tmp_path), registry, channel=None, signing_key=None)
    with pytest.raises(ActionUnavailableError):
        actions.promote(2, "ops")
    assert registry.get_model_version("fraud", 2).stage == "candidate"  # type: ignore[union-attr]


@pytest.fixture
def unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FleetActions, InMemoryRegistry]]:
    """FleetActions over the real MQTT channel, with no broker behind it (waits cut to 0.3 s)."""
    import server.actions.channel as channel_module
    import server.release.publisher as publisher_module
    from server.actions import MqttReleaseChannel
    from shared.mqtt import BrokerAddress, MqttClient
    from tests.edge_agent.agent_testlib import closed_port_url

    monkeypatch.setattr(channel_module, "ACK_TIMEOUT_S", 0.3)
    monkeypatch.setattr(publisher_module, "ACK_TIMEOUT_S", 0.3)
    registry = InMemoryRegistry()
    for version, stage in ((1, "published"), (2, "published"), (3, "candidate")):
        registry.add_model_version(_record(version, stage), f"onnx{version}".encode() * 300)
    _device(registry, "d1")
    client = MqttClient(BrokerAddress.parse(closed_port_url()), "no-broker", persistent=False)
    settings = ServerSettings(data_dir=tmp_path, fleet="f1")
    channel = MqttReleaseChannel(client, "f1")
    yield FleetActions(settings, registry, channel=channel, signing_key=lambda: KEY), registry
    client.stop()


def test_an_unconfirmed_release_changes_nothing_and_can_be_retried(unreachable: tuple) -> None:  # type: ignore[type-arg]
    actions, registry = unreachable
    before = _stages(registry)
    for action in (lambda: actions.promote(3, "ops"), lambda: actions.rollback(1, "ops")):
        with pytest.raises(ActionUnavailableError, match="nothing changed, retry"):
            action()
        assert _stages(registry) == before  # the retry is not refused as a conflict
    with pytest.raises(ActionUnavailableError, match="did not confirm the pin"):
        actions.pin_device("d1", 1, "ops")
    assert registry.list_commands("f1") == []  # no command the fleet never got
    assert registry.list_audit() == []
