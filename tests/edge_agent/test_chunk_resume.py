"""A lost chunk is asked for again (ChunkRequest) and the cloud's fleet monitor re-sends it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentSettings
from server.mqtt.fleet_monitor import FleetMonitor, server_client
from server.registry import InMemoryRegistry
from server.release.release import manifest_record
from shared import topics
from tests.edge_agent.agent_harness import AgentThread, Observer, wait_for
from tests.edge_agent.conftest import Bundle, Keys

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


@pytest.fixture
def monitor(mosquitto: Any, fleet: str) -> Iterator[tuple[FleetMonitor, InMemoryRegistry]]:
    registry = InMemoryRegistry()
    client = server_client(mosquitto.url, fleet)
    mon = FleetMonitor(client, registry, fleet, "fraud")
    mon.start()
    client.start()
    yield mon, registry
    mon.stop()
    client.stop()


def test_missing_chunk_is_requested_and_resent(
    mosquitto: Any,
    fleet: str,
    tmp_path: Path,
    operator_keys: Keys,
    make_bundle: Callable[..., Bundle],
    monitor: tuple[FleetMonitor, InMemoryRegistry],
) -> None:
    mon, registry = monitor
    bundle = make_bundle(1)
    assert len(bundle.chunks) > 3
    registry.add_model_version(manifest_record(bundle.manifest), bundle.model_bytes)
    settings = AgentSettings(
        device_id="dev1",
        fleet=fleet,
        broker_url=mosquitto.url,
        data_dir=tmp_path / "agent",
        trusted_keys=[operator_keys.public_path],
        heartbeat_s=1.0,
        download_timeout_s=8.0,
    )
    observer = Observer(mosquitto.url, fleet, "dev1")
    try:
        with AgentThread(settings):
            # A release whose chunk 2 never reached the broker (lost in transit, broker restart...).
            lossy = [c if i != 2 else None for i, c in enumerate(bundle.chunks)]
            for i, chunk in enumerate(lossy):
                if chunk is not None:
                    observer.send(topics.chunk(fleet, "fraud", 1, i), chunk, retain=True)
            observer.send(topics.manifest(fleet, "fraud"), bundle.manifest_bytes, retain=True)
            status = wait_for(
                lambda: (s := observer.latest_status()) is not None and s.model_version == 1 and s,
                timeout=30,
                what="the agent to install v1 after asking for chunk 2",
            )
            assert status.signature_verified
            assert mon.stats.chunk_requests >= 1
    finally:
        observer.close()
