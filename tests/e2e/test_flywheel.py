"""The whole flywheel on real parts: Mosquitto, server + SuperLink, 3 agents + SuperNodes."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shared import topics
from shared.datasets.split import read_agent_parts
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import DeviceStatus, decode
from simulations.demo import prepare_split
from simulations.fleet import LocalFleet, agent_store_state
from simulations.replay import Replayer
from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]


class StatusWatcher:
    """The retained status messages of the fleet, as any cloud consumer would see them."""

    def __init__(self, broker_url: str, fleet: str) -> None:
        self.latest: dict[str, DeviceStatus] = {}
        self._lock = threading.Lock()
        self.client = MqttClient(BrokerAddress.parse(broker_url), f"e2e-watcher-{time.time_ns()}", persistent=False)
        self.client.subscribe(topics.all_status_filter(fleet), self._on_status)
        self.client.start()

    def _on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        status = decode(DeviceStatus, payload)
        with self._lock:
            self.latest[status.device_id] = status

    def snapshot(self) -> dict[str, DeviceStatus]:
        with self._lock:
            return dict(self.latest)


def test_one_training_run_reaches_every_agent(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    split_dir = prepare_split(tmp_path / "split", n_agents=3, synthetic=24_000, seed=3)
    parts = read_agent_parts(split_dir)
    watcher = StatusWatcher(mosquitto.url, "e2e")
    fleet = LocalFleet(tmp_path / "fleet", mosquitto.url, split_dir, n_agents=3, fleet="e2e", local_epochs=2)
    try:
        fleet.write_configs()
        fleet.start_server()
        initial = fleet.latest_version()
        assert initial == 1
        initial_auprc = fleet.get("/api/models/1")["metrics"]["auprc"]
        fleet.start_agents()
        fleet.wait_serving(initial)

        Replayer(
            mosquitto.url,
            "e2e",
            dict(zip(fleet.device_ids, parts, strict=True)),
            rate=0,
            batch=250,
            label_delay=1.0,
            limit=3000,
        ).run(until_done=True)
        fleet.wait_labelled(min(3000, *(len(p) for p in parts)))

        # Through the API as an operator would (the demo drives `fedforge train` instead), with
        # a robust rule: the strategy travels in Flower's run config to the ServerApp.
        run = fleet.start_run(rounds=1, strategy="median")
        assert run["status"] == "succeeded", run
        assert run["strategy"] == "median"  # recorded on the run by the ServerApp
        published = run["published_version"]
        assert published == 2
        assert run["round_metrics"][0]["participants"] == 3

        fleet.wait_serving(published)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = watcher.snapshot()
            if len(statuses) == 3 and all(s.model_version == published for s in statuses.values()):
                break
            time.sleep(0.5)
        statuses = watcher.snapshot()
        assert {d: s.model_version for d, s in statuses.items()} == dict.fromkeys(fleet.device_ids, published)
        assert all(s.signature_verified for s in statuses.values())
        for agent in fleet.agents:
            state = agent_store_state(agent.data_dir / "agent.db")
            assert state["installed_latest"] == published, (agent.device_id, state)
            assert state["predictions"] >= 1

        final_auprc = fleet.get(f"/api/models/{published}")["metrics"]["auprc"]
        assert math.isfinite(final_auprc)
        assert final_auprc >= initial_auprc
        manifest = fleet.get(f"/api/models/{published}/manifest")
        assert manifest["parent_version"] == initial
        assert manifest["signature"]

        # Roll the real fleet back through the server process: signed command, agents' acks.
        rollback = fleet.post("/api/fleet/rollback", {"version": initial})
        fleet.wait_serving(initial)

        def rollback_acks() -> dict[str, Any]:
            rollouts = fleet.get("/api/rollouts") or {"versions": []}
            for version in rollouts["versions"]:
                for command in version["commands"]:
                    if command["command_id"] == rollback["command_id"]:
                        return dict(command["acks"])
            return {}

        fleet.wait_for(lambda: set(rollback_acks()) == set(fleet.device_ids), 60, "every agent's ack of the rollback")
        assert all(a["accepted"] and a["serving_version"] == initial for a in rollback_acks().values())
        rollouts = fleet.get("/api/rollouts")
        assert (rollouts["release"], rollouts["release_share"]) == (initial, 1.0)
        audit = fleet.get("/api/audit")["entries"]
        assert [e["action"] for e in audit if e["actor"] == "fleet-admin"][:2] == ["fleet.rollback", "run.started"]
    finally:
        fleet.stop()
        watcher.client.stop()
    assert processes_mentioning(str(tmp_path)) == []
