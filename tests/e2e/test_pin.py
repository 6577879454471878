"""Pin one device to a version and unpin it, through the API, with real agents on a real Mosquitto.

A pinned device serves its version while the fleet's release moves on, across a restart
of its agent (the pin is kept on disk, and the retained command is redelivered without
being applied twice); unpinned, it serves the release again. Every answer comes back as an
acknowledgement, and the device reports its pin in its status.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

import pytest
from fastapi.testclient import TestClient

from server.registry import InMemoryRegistry
from shared import topics
from shared.bundle import split_chunks
from shared.commands import device_command
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import Command, ModelManifest
from tests.e2e.conftest import acked, add_version, serving, wait_fleet
from tests.edge_agent.agent_harness import wait_for

pytestmark = pytest.mark.e2e


def pinned(api: TestClient) -> dict[str, Any]:
    return {d["device_id"]: d["pinned_version"] for d in api.get("/api/devices").json()}


def signed(
    world: dict[str, Any], kind: Literal["pin", "unpin"], manifest: ModelManifest, device: str = "edge-a"
) -> Command:
    """A pin or unpin for ``device``, signed by the operator's key now, as the server would."""
    return device_command(
        world["key"],
        kind=kind,
        command_id=f"{kind}-{uuid.uuid4().hex[:6]}",
        fleet=world["fleet"],
        task="fraud",
        device_id=device,
        manifest=manifest,
        issued_by="ops",
        ttl_s=600,
    )


def test_a_pinned_device_holds_its_version_until_unpinned(release_world: dict[str, Any]) -> None:
    api: TestClient = release_world["api"]
    registry: InMemoryRegistry = release_world["registry"]
    agents = {device: release_world["start_agent"](device) for device in ("edge-a", "edge-b")}
    wait_fleet(api, {"edge-a": 1, "edge-b": 1})

    pin = api.post("/api/devices/edge-a/pin", json={"version": 1})
    assert pin.status_code == 200, pin.text
    ack = acked(registry, pin.json()["command_id"], "edge-a")
    assert (ack.accepted, ack.serving_version) == (True, 1), ack.reason
    wait_for(lambda: pinned(api) == {"edge-a": 1, "edge-b": None}, 30, "edge-a reporting its pin")

    assert api.post("/api/models/2/promote").status_code == 200
    wait_fleet(api, {"edge-a": 1, "edge-b": 2})
    time.sleep(1.0)  # edge-a has had the manifest; it must still serve v1
    assert serving(api) == {"edge-a": 1, "edge-b": 2}
    assert not (agents["edge-a"].settings.models_dir / "v2.onnx").exists()

    # Restarted, the agent is still pinned; the retained pin is redelivered and only acknowledged.
    agents["edge-a"].__exit__()
    agents["edge-a"] = release_world["start_agent"]("edge-a")
    wait_for(lambda: pinned(api)["edge-a"] == 1 and serving(api)["edge-a"] == 1, 60, "edge-a back, pinned")
    time.sleep(1.0)
    assert serving(api) == {"edge-a": 1, "edge-b": 2}
    assert acked(registry, pin.json()["command_id"], "edge-a").accepted

    unpin = api.post("/api/devices/edge-a/unpin")
    assert unpin.status_code == 200, unpin.text
    assert unpin.json()["version"] == 2  # the release it goes back to
    wait_fleet(api, {"edge-a": 2, "edge-b": 2})
    ack = acked(registry, unpin.json()["command_id"], "edge-a")
    assert (ack.accepted, ack.serving_version) == (True, 2), ack.reason
    wait_for(lambda: pinned(api) == {"edge-a": None, "edge-b": None}, 30, "edge-a reporting no pin")
    # Rollouts show which device each pin or unpin was for.
    v2 = next(v for v in api.get("/api/rollouts").json()["versions"] if v["version"] == 2)
    assert [(c["kind"], c["device_id"]) for c in v2["commands"]] == [("unpin", "edge-a")]
    actions = [e["action"] for e in api.get("/api/audit").json()["entries"]]
    assert actions[:3] == ["device.unpinned", "model.promoted", "device.pinned"]


def test_pins_are_refused_for_unreleased_versions_and_unknown_devices(release_world: dict[str, Any]) -> None:
    api: TestClient = release_world["api"]
    release_world["start_agent"]("edge-a")
    wait_fleet(api, {"edge-a": 1})
    candidate = api.post("/api/devices/edge-a/pin", json={"version": 2})
    assert candidate.status_code == 409
    assert "not released" in candidate.json()["detail"]
    assert api.post("/api/devices/nobody/pin", json={"version": 1}).status_code == 404
    assert api.post("/api/devices/edge-a/pin", json={"version": 0}).status_code == 422
    assert api.post("/api/devices/edge-a/pin", json={}).status_code == 422


def test_an_unpin_follows_a_release_made_after_it_was_issued(release_world: dict[str, Any]) -> None:
    # Retained messages arrive in any order: an unpin issued at v1 reaches a device that has
    # already seen the v3 manifest (held while pinned). It must follow v3, not stop at v1.
    api: TestClient = release_world["api"]
    registry: InMemoryRegistry = release_world["registry"]
    fleet, key = release_world["fleet"], release_world["key"]
    release_world["start_agent"]("edge-a")
    wait_fleet(api, {"edge-a": 1})
    v1 = ModelManifest.model_validate(registry.get_model_version("fraud", 1).manifest)  # type: ignore[union-attr]

    def unpin_to_v1() -> Command:
        """Signed now, naming v1: the release when an operator sent it."""
        return signed(release_world, "unpin", v1)

    early_unpin = unpin_to_v1()
    assert api.post("/api/devices/edge-a/pin", json={"version": 1}).status_code == 200
    wait_for(lambda: pinned(api) == {"edge-a": 1}, 30, "edge-a pinned")
    add_version(registry, key, 3, "candidate")
    assert api.post("/api/models/3/promote").status_code == 200
    time.sleep(1.0)
    assert serving(api) == {"edge-a": 1}

    # Its issue time is before the pin's, so it must be refused as stale...
    watcher = MqttClient(BrokerAddress.parse(release_world["url"]), f"w-{uuid.uuid4().hex[:6]}", persistent=False)
    watcher.start()
    try:
        topic = topics.commands(fleet, "edge-a")
        watcher.publish_and_wait(topic, early_unpin.to_bytes())
        ack = acked(registry, early_unpin.command_id, "edge-a")
        assert (ack.accepted, ack.serving_version) == (False, 1)
        assert "stale" in ack.reason
        # ...and one issued later but naming v1 (the release when it was signed) leads to v3.
        late_unpin = unpin_to_v1()
        watcher.publish_and_wait(topic, late_unpin.to_bytes())
        ack = acked(registry, late_unpin.command_id, "edge-a")
        assert ack.accepted, ack.reason
        assert "following the release v3" in ack.reason
        wait_fleet(api, {"edge-a": 3})
    finally:
        watcher.publish_and_wait(topics.commands(fleet, "edge-a"), b"", retain=True)
        watcher.stop()


def test_an_unpin_ends_the_download_of_the_pin_it_supersedes(release_world: dict[str, Any]) -> None:
    # A pin waiting for its download (v3, a candidate: nobody serves its chunks) is answered as
    # superseded when an unpin comes first, and its download ends: v3's chunks, arriving after
    # the unpin, must not install v3 as if it were a release.
    api: TestClient = release_world["api"]
    registry: InMemoryRegistry = release_world["registry"]
    fleet, key = release_world["fleet"], release_world["key"]
    agent = release_world["start_agent"]("edge-a")
    wait_fleet(api, {"edge-a": 1})
    add_version(registry, key, 3, "candidate")
    v3 = ModelManifest.model_validate(registry.get_model_version("fraud", 3).manifest)  # type: ignore[union-attr]
    artifact = registry.get_artifact("fraud", 3)
    assert artifact is not None
    pin = signed(release_world, "pin", v3)
    watcher = MqttClient(BrokerAddress.parse(release_world["url"]), f"w-{uuid.uuid4().hex[:6]}", persistent=False)
    watcher.start()
    try:
        watcher.publish_and_wait(topics.commands(fleet, "edge-a"), pin.to_bytes())
        wait_for(lambda: pinned(api) == {"edge-a": 3}, 30, "edge-a pinned to v3, downloading it")
        assert serving(api) == {"edge-a": 1}

        unpin = api.post("/api/devices/edge-a/unpin")
        assert unpin.status_code == 200, unpin.text
        superseded = acked(registry, pin.command_id, "edge-a")
        assert not superseded.accepted
        assert superseded.reason == f"superseded by command {unpin.json()['command_id']}"
        ack = acked(registry, unpin.json()["command_id"], "edge-a")
        assert (ack.accepted, ack.serving_version) == (True, 1), ack.reason
        wait_for(lambda: pinned(api) == {"edge-a": None}, 30, "edge-a reporting no pin")

        for index, data in enumerate(split_chunks(artifact, v3.chunk_size)):
            watcher.publish_and_wait(topics.chunk(fleet, "fraud", 3, index), data)
        time.sleep(1.5)  # what the agent would need to assemble and install the v3 it no longer wants
        assert serving(api) == {"edge-a": 1}
        assert not (agent.settings.models_dir / "v3.onnx").exists()
    finally:
        watcher.publish_and_wait(topics.commands(fleet, "edge-a"), b"", retain=True)
        watcher.stop()
