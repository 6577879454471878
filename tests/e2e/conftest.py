"""The release world of the rollout tests: the production server wiring minus uvicorn, real agents.

FleetActions over MQTT, the fleet monitor and the API app on a real Mosquitto, with v1
published and v2 a candidate; ``start_agent`` starts a real ``Agent`` with its own store
and model files.
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
from shared.schemas import ModelManifest
from shared.signing import write_keypair
from tests.edge_agent.agent_harness import AgentThread, wait_for
from tests.edge_agent.conftest import export_onnx, fraud_manifest, make_spec
from tests.server.auth_support import identities


def serving(api: TestClient) -> dict[str, Any]:
    return {d["device_id"]: d["serving_version"] for d in api.get("/api/devices").json()}


def wait_fleet(api: TestClient, expected: dict[str, int]) -> None:
    wait_for(lambda: serving(api) == expected, 120, f"fleet serving {expected} (now {serving(api)})")


def acked(registry: InMemoryRegistry, command_id: str, device: str) -> Any:
    """The device's answer to the command, once it has come (an AckRecord)."""
    return wait_for(
        lambda: next((a for a in registry.list_acks(command_id) if a.device_id == device), None),
        60,
        f"{device}'s ack of {command_id}",
    )


def add_version(registry: InMemoryRegistry, key: Any, version: int, stage: str) -> None:
    """A real, signed ONNX model version in the registry, as training leaves one."""
    spec = make_spec()
    data = export_onnx(spec.width, seed=version)
    manifest = fraud_manifest(
        data,
        version,
        spec,
        key,
        parent_version=version - 1 or None,
        chunk_size=4096,
        created=time.time() - 100 + version,
    )
    registry.add_model_version(manifest_record(manifest, stage), data)


@pytest.fixture
def release_world(mosquitto: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    fleet = f"rb{uuid.uuid4().hex[:8]}"
    key = write_keypair(tmp_path / "keys" / "op.pem", tmp_path / "keys" / "op.pub.pem")
    registry = InMemoryRegistry()
    for version, stage in ((1, "published"), (2, "candidate")):
        add_version(registry, key, version, stage)
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
