"""Remote settings through the API to a real agent on a real Mosquitto, and back as its answers.

The operator sends settings; the agent checks them against its own, keeps them and answers
(then asks to restart: here, in a thread, the harness restarts it); a value it refuses is
answered with the reason and changes nothing. The device's config view says what is in
effect and how each config was answered.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge_agent.remote_config import with_remote_settings
from server.registry import InMemoryRegistry
from tests.e2e.conftest import acked, wait_fleet

pytestmark = pytest.mark.e2e


def test_the_device_view_shows_what_the_agent_applied_and_what_it_refused(release_world: dict[str, Any]) -> None:
    api: TestClient = release_world["api"]
    registry: InMemoryRegistry = release_world["registry"]
    agent = release_world["start_agent"]("edge-a")
    wait_fleet(api, {"edge-a": 1})
    view = api.get("/api/devices/edge-a/config").json()
    assert (view["in_effect"], view["history"]) == (None, [])
    assert "heartbeat_s" in view["settable"]

    good = api.post("/api/devices/edge-a/config", json={"settings": {"heartbeat_s": 1.5}})
    assert good.status_code == 200, good.text
    answer = acked(registry, good.json()["command_id"], "edge-a")
    assert answer.accepted, answer.reason
    assert agent.agent is not None
    assert agent.agent.restart_requested
    assert with_remote_settings(agent.settings).heartbeat_s == 1.5  # what the agent restarts with

    # Restarted (as the CLI would), the retained config is redelivered and only acknowledged.
    agent.__exit__()
    agent = release_world["start_agent"]("edge-a")
    wait_fleet(api, {"edge-a": 1})

    bad = api.post("/api/devices/edge-a/config", json={"settings": {"heartbeat_s": -1.0}})
    assert bad.status_code == 200, bad.text
    refusal = acked(registry, bad.json()["command_id"], "edge-a")
    assert not refusal.accepted
    assert "heartbeat_s" in refusal.reason
    assert agent.agent is not None
    assert not agent.agent.restart_requested

    view = api.get("/api/devices/edge-a/config").json()
    assert view["in_effect"]["command_id"] == good.json()["command_id"]
    assert view["in_effect"]["settings"] == {"heartbeat_s": 1.5}
    assert [(c["command_id"], c["state"]) for c in view["history"]] == [
        (bad.json()["command_id"], "refused"),
        (good.json()["command_id"], "applied"),
    ]
    assert api.get("/api/devices/nobody/config").status_code == 404
