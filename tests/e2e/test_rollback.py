"""Promote and roll back through the API, with three real agents on a real Mosquitto.

The server side is the production wiring minus uvicorn (FleetActions over MQTT, the fleet
monitor, the API app); the agents are real ``Agent`` objects with their own stores and
model files. One agent joins late and never held v1, so it must download it for the
rollback; the others switch from their kept files. Every agent must end serving v1, and
every acknowledgement must be in GET /api/rollouts.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge_agent.config import AgentSettings
from server.actions import FleetActions, MqttReleaseChannel
from server.api.app import create_app
from server.config import ServerSettings
from server.mqtt.fleet_monitor import FleetMonitor, server_client
from server.registry import InMemoryRegistry
from server.release.release import manifest_record
from shared import topics
from shared.bundle import build_manifest
from shared.commands import rollback_command
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import CommandAck
from shared.signing import write_keypair
from shared.tasks.fraud import INPUT_NAME, OUTPUT_NAME
from tests.edge_agent.agent_harness import AgentThread, wait_for
from tests.edge_agent.conftest import export_onnx, make_spec
from tests.server.auth_support import identities

pytestmark = pytest.mark.e2e

DEVICES = ("edge-a", "edge-b", "edge-c")


@pytest.fixture
def world(mosquitto: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    fleet = f"rb{uuid.uuid4().hex[:8]}"
    key = write_keypair(tmp_path / "keys" / "op.pem", tmp_path / "keys" / "op.pub.pem")
    spec = make_spec()
    registry = InMemoryRegistry()
    for version, stage in ((1, "published"), (2, "candidate")):
        data = export_onnx(spec.width, seed=version)
        manifest = build_manifest(
            model_bytes=data,
            task="fraud",
            version=version,
            feature_spec=spec,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            signing_key=key,
            parent_version=version - 1 or None,
            chunk_size=4096,
            created=time.time() - 100 + version,
        )
        registry.add_model_version(manifest_record(manifest, stage), data)
    settings = ServerSettings(data_dir=tmp_path / "server", fleet=fleet, broker_url=mosquitto.url)
    client = server_client(mosquitto.url, fleet)
    monitor = FleetMonitor(client, registry, fleet, "fraud")
    monitor.start()
    client.start()
    actions = FleetActions(settings, registry, channel=MqttReleaseChannel(client, fleet), signing_key=lambda: key)
    ids = identities(registry)
    api = TestClient(create_app(settings, registry, ids.auth, actions))
    api.headers.update(ids.bearer("operator"))
    # v1 is the release when the fleet starts (as ensure_bootstrap_model leaves it).
    v1 = registry.get_model_version("fraud", 1)
    artifact = registry.get_artifact("fraud", 1)
    assert v1 is not None
    assert artifact is not None
    from shared.schemas import ModelManifest

    actions.channel.publish_release(ModelManifest.model_validate(v1.manifest), artifact)  # type: ignore[union-attr]
    agents: list[AgentThread] = []

    def start_agent(device: str) -> AgentThread:
        agent = AgentThread(
            AgentSettings(
                device_id=device,
                fleet=fleet,
                broker_url=mosquitto.url,
                data_dir=tmp_path / device,
                trusted_keys=[tmp_path / "keys" / "op.pub.pem"],
                heartbeat_s=0.5,
            )
        )
        agent.__enter__()
        agents.append(agent)
        return agent

    try:
        yield {
            "api": api,
            "registry": registry,
            "start_agent": start_agent,
            "fleet": fleet,
            "key": key,
            "url": mosquitto.url,
            "tmp": tmp_path,
        }
    finally:
        for agent in reversed(agents):
            with contextlib.suppress(Exception):
                agent.__exit__()
        monitor.stop()
        client.stop()


def _serving(api: TestClient) -> dict[str, Any]:
    return {d["device_id"]: d["serving_version"] for d in api.get("/api/devices").json()}


def _wait_fleet(api: TestClient, expected: dict[str, int]) -> None:
    wait_for(lambda: _serving(api) == expected, 120, f"fleet serving {expected} (now {_serving(api)})")


def test_promote_then_rollback_reaches_every_agent_and_is_acknowledged(world: dict[str, Any]) -> None:
    api: TestClient = world["api"]
    for device in DEVICES[:2]:
        world["start_agent"](device)
    _wait_fleet(api, dict.fromkeys(DEVICES[:2], 1))

    promoted = api.post("/api/models/2/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["previous_release"] == 1
    late = world["start_agent"](DEVICES[2])  # joins at v2: it never held v1
    _wait_fleet(api, dict.fromkeys(DEVICES, 2))
    late_models = late.settings.models_dir
    assert not (late_models / "v1.onnx").exists()
    assert api.get("/api/rollouts").json()["release_share"] == 1.0

    rolled = api.post("/api/fleet/rollback", json={"version": 1})
    assert rolled.status_code == 200, rolled.text
    body = rolled.json()
    assert (body["from_version"], body["withdrawn"]) == (2, [2])
    _wait_fleet(api, dict.fromkeys(DEVICES, 1))
    assert (late_models / "v1.onnx").is_file()  # downloaded for the rollback
    # Every agent now refuses v2 by manifest, across restarts too.
    assert all((world["tmp"] / d / "models" / "rollback-floor").read_text().strip() == "2" for d in DEVICES)

    def all_acked() -> dict[str, Any] | None:
        view = api.get("/api/rollouts").json()
        entry = next(v for v in view["versions"] if v["version"] == 1)
        acks = entry["commands"][0]["acks"] if entry["commands"] else {}
        return view if set(acks) == set(DEVICES) else None

    view = wait_for(all_acked, 60, "an ack from every agent")
    assert view["release"] == 1
    assert view["release_share"] == 1.0
    v1 = next(v for v in view["versions"] if v["version"] == 1)
    assert v1["devices_serving"] == sorted(DEVICES)
    assert v1["share"] == 1.0
    command = v1["commands"][0]
    assert command["command_id"] == body["command_id"]
    assert command["issued_by"] == "operator"
    assert all(a["accepted"] and a["serving_version"] == 1 for a in command["acks"].values()), command["acks"]
    assert next(v for v in view["versions"] if v["version"] == 2)["stage"] == "withdrawn"
    models = {m["version"]: m["stage"] for m in api.get("/api/models").json()}
    assert models == {1: "published", 2: "withdrawn"}
    audit = api.get("/api/audit").json()["entries"]
    assert [(e["actor"], e["action"]) for e in audit[:2]] == [
        ("operator", "fleet.rollback"),
        ("operator", "model.promoted"),
    ]


def test_agent_refuses_a_forged_rollback_and_says_why(world: dict[str, Any], tmp_path: Path) -> None:
    api: TestClient = world["api"]
    world["start_agent"]("edge-a")
    _wait_fleet(api, {"edge-a": 1})
    assert api.post("/api/models/2/promote").status_code == 200
    _wait_fleet(api, {"edge-a": 2})
    # A well-formed rollback signed by a key the agent does not trust.
    rogue = write_keypair(tmp_path / "rogue.pem", tmp_path / "rogue.pub.pem")
    v1 = world["registry"].get_model_version("fraud", 1)
    from shared.schemas import ModelManifest

    forged = rollback_command(
        rogue,
        command_id="forged-1",
        fleet=world["fleet"],
        manifest=ModelManifest.model_validate(v1.manifest),
        issued_by="mallory",
        ttl_s=600,
    )
    acks: list[CommandAck] = []
    watcher = MqttClient(BrokerAddress.parse(world["url"]), f"w-{uuid.uuid4().hex[:6]}", persistent=False)
    watcher.subscribe(
        topics.acks(world["fleet"], "edge-a"), lambda t, p, r: acks.append(CommandAck.model_validate_json(p))
    )
    watcher.start()
    try:
        watcher.publish_and_wait(topics.fleet_commands(world["fleet"]), forged.to_bytes(), retain=True)
        ack = wait_for(lambda: next((a for a in acks if a.command_id == "forged-1"), None), 30, "the forged ack")
        assert ack.accepted is False
        assert "not a trusted operator key" in ack.reason
        assert ack.serving_version == 2
        assert _serving(api) == {"edge-a": 2}
        # The refusal is stored and shown like any other acknowledgement.
        stored = wait_for(lambda: world["registry"].list_acks("forged-1"), 30, "the stored ack")
        assert stored[0].accepted is False
    finally:
        watcher.publish_and_wait(topics.fleet_commands(world["fleet"]), b"", retain=True)
        watcher.stop()
