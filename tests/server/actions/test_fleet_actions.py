"""FleetActions without a broker: release rules, signed commands, revoke, run validation, audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.actions import ActionConflictError, ActionUnavailableError, FleetActions, InMemoryReleaseChannel
from server.config import ServerSettings
from server.errors import NotFoundError
from server.registry import InMemoryRegistry, ModelVersionRecord
from shared.commands import verify_rollback
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
