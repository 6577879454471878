"""Promote and roll back through the API, with three real agents on a real Mosquitto.

The server side is the production wiring minus uvicorn (FleetActions over MQTT, the fleet
monitor, the API app); the agents are real ``Agent`` objects with their own stores and
model files. One agent joins late and never held v1, so it must download it for the
rollback; the others switch from their kept files. Every agent must end serving v1, and
every acknowledgement must be in GET /api/rollouts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared import topics
from shared.bundle import split_chunks
from shared.commands import rollback_command
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import Command, CommandAck, ModelManifest
from shared.signing import write_keypair
from tests.e2e.conftest import add_version, serving, wait_fleet
from tests.edge_agent.agent_harness import AgentThread, wait_for

pytestmark = pytest.mark.e2e

DEVICES = ("edge-a", "edge-b", "edge-c")


def test_promote_then_rollback_reaches_every_agent_and_is_acknowledged(release_world: dict[str, Any]) -> None:
    api: TestClient = release_world["api"]
    for device in DEVICES[:2]:
        release_world["start_agent"](device)
    wait_fleet(api, dict.fromkeys(DEVICES[:2], 1))

    promoted = api.post("/api/models/2/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["previous_release"] == 1
    late = release_world["start_agent"](DEVICES[2])  # joins at v2: it never held v1
    wait_fleet(api, dict.fromkeys(DEVICES, 2))
    late_models = late.settings.models_dir
    assert not (late_models / "v1.onnx").exists()
    assert api.get("/api/rollouts").json()["release_share"] == 1.0

    rolled = api.post("/api/fleet/rollback", json={"version": 1})
    assert rolled.status_code == 200, rolled.text
    body = rolled.json()
    assert (body["from_version"], body["withdrawn"]) == (2, [2])
    wait_fleet(api, dict.fromkeys(DEVICES, 1))
    assert (late_models / "v1.onnx").is_file()  # downloaded for the rollback
    # Every agent now refuses v2 by manifest, across restarts too.
    assert all((release_world["tmp"] / d / "models" / "rollback-floor").read_text().strip() == "2" for d in DEVICES)

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


def test_agent_refuses_a_forged_rollback_and_says_why(release_world: dict[str, Any], tmp_path: Path) -> None:
    api: TestClient = release_world["api"]
    release_world["start_agent"]("edge-a")
    wait_fleet(api, {"edge-a": 1})
    assert api.post("/api/models/2/promote").status_code == 200
    wait_fleet(api, {"edge-a": 2})
    # A well-formed rollback signed by a key the agent does not trust.
    rogue = write_keypair(tmp_path / "rogue.pem", tmp_path / "rogue.pub.pem")
    v1 = release_world["registry"].get_model_version("fraud", 1)
    forged = rollback_command(
        rogue,
        command_id="forged-1",
        fleet=release_world["fleet"],
        manifest=ModelManifest.model_validate(v1.manifest),
        issued_by="mallory",
        ttl_s=600,
    )
    acks: list[CommandAck] = []
    watcher = MqttClient(BrokerAddress.parse(release_world["url"]), f"w-{uuid.uuid4().hex[:6]}", persistent=False)
    watcher.subscribe(
        topics.acks(release_world["fleet"], "edge-a"), lambda t, p, r: acks.append(CommandAck.model_validate_json(p))
    )
    watcher.start()
    try:
        watcher.publish_and_wait(topics.fleet_commands(release_world["fleet"]), forged.to_bytes(), retain=True)
        ack = wait_for(lambda: next((a for a in acks if a.command_id == "forged-1"), None), 30, "the forged ack")
        assert ack.accepted is False
        assert "not a trusted operator key" in ack.reason
        assert ack.serving_version == 2
        assert serving(api) == {"edge-a": 2}
        # The refusal is stored and shown like any other acknowledgement.
        stored = wait_for(lambda: release_world["registry"].list_acks("forged-1"), 30, "the stored ack")
        assert stored[0].accepted is False
    finally:
        watcher.publish_and_wait(topics.fleet_commands(release_world["fleet"]), b"", retain=True)
        watcher.stop()


def rollback_to(world: dict[str, Any], manifest: ModelManifest) -> Command:
    """A fleet rollback to ``manifest``'s version, signed by the operator's key now."""
    return rollback_command(
        world["key"],
        command_id=f"rb-{uuid.uuid4().hex[:6]}",
        fleet=world["fleet"],
        manifest=manifest,
        issued_by="ops",
        ttl_s=600,
    )


@dataclass(frozen=True)
class WaitingRollback:
    agent: AgentThread
    watcher: MqttClient
    command: Command  # the rollback to v3, waiting for its download
    v3: ModelManifest


@contextmanager
def rollback_waiting_for_v3(world: dict[str, Any]) -> Iterator[WaitingRollback]:
    """edge-a serving v1 and rolled back to v3, a candidate: nobody serves its chunks, so it waits."""
    registry, fleet = world["registry"], world["fleet"]
    agent = world["start_agent"]("edge-a")
    wait_fleet(world["api"], {"edge-a": 1})
    add_version(registry, world["key"], 3, "candidate")
    v3 = ModelManifest.model_validate(registry.get_model_version("fraud", 3).manifest)
    watcher = MqttClient(BrokerAddress.parse(world["url"]), f"w-{uuid.uuid4().hex[:6]}", persistent=False)
    watcher.start()
    try:
        to_v3 = rollback_to(world, v3)
        watcher.publish_and_wait(topics.fleet_commands(fleet), to_v3.to_bytes(), retain=True)
        wait_for(lambda: agent.call(lambda: agent.agent.models.updater.downloading) == 3, 30, "v3 downloading")
        yield WaitingRollback(agent, watcher, to_v3, v3)
    finally:
        watcher.publish_and_wait(topics.fleet_commands(fleet), b"", retain=True)
        watcher.stop()


def test_a_later_rollback_supersedes_one_still_downloading(release_world: dict[str, Any]) -> None:
    # A rollback waiting for its download is answered as superseded by a later rollback the
    # device carries out at once, and its download ends: v3's chunks, arriving afterwards,
    # must not switch the device to v3.
    api: TestClient = release_world["api"]
    registry = release_world["registry"]
    fleet = release_world["fleet"]
    v1 = ModelManifest.model_validate(registry.get_model_version("fraud", 1).manifest)
    with rollback_waiting_for_v3(release_world) as waiting:
        to_v3, v3 = waiting.command, waiting.v3
        artifact = registry.get_artifact("fraud", 3)
        assert artifact is not None
        to_v1 = rollback_to(release_world, v1)
        waiting.watcher.publish_and_wait(topics.fleet_commands(fleet), to_v1.to_bytes(), retain=True)
        superseded = wait_for(lambda: registry.list_acks(to_v3.command_id), 30, "the superseded rollback's ack")
        assert not superseded[0].accepted
        assert superseded[0].reason == f"superseded by command {to_v1.command_id}"
        done = wait_for(lambda: registry.list_acks(to_v1.command_id), 30, "the later rollback's ack")
        assert (done[0].accepted, done[0].serving_version) == (True, 1), done[0].reason

        for index, data in enumerate(split_chunks(artifact, v3.chunk_size)):
            waiting.watcher.publish_and_wait(topics.chunk(fleet, "fraud", 3, index), data)
        time.sleep(1.5)  # what the agent would need to assemble and switch to the v3 no longer asked for
        assert serving(api) == {"edge-a": 1}
        assert not (waiting.agent.settings.models_dir / "v3.onnx").exists()


def test_a_release_that_replaces_a_rollbacks_download_answers_the_rollback(release_world: dict[str, Any]) -> None:
    # A rollback waiting for its download loses that download to a release promoted after it;
    # the rollback is answered, not left pending.
    api: TestClient = release_world["api"]
    registry = release_world["registry"]
    with rollback_waiting_for_v3(release_world) as waiting:
        assert api.post("/api/models/2/promote").status_code == 200
        answer = wait_for(lambda: registry.list_acks(waiting.command.command_id), 30, "the replaced rollback's ack")
        assert not answer[0].accepted
        assert answer[0].reason == "superseded by the release v2"
        wait_fleet(api, {"edge-a": 2})
