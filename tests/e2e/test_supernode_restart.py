"""An agent's SuperNode that dies is restarted and joins the SuperLink again (real Flower)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.federation.supernode import SuperNodeCompanion
from server.config import ServerSettings
from server.federation.flower import CONNECTION, executable, flower_env, flwr_home, superlink_process, write_app
from shared.net import free_port, wait_port
from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def online_nodes(settings: ServerSettings) -> set[str]:
    proc = subprocess.run(
        [executable("flwr"), "supernode", "list", CONNECTION, "--format", "json"],
        env=flower_env(flwr_home(settings)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    start = proc.stdout.find("{")
    if start < 0:
        return set()
    listed = json.loads(proc.stdout[start:]).get("nodes", [])
    return {str(n["node-id"]) for n in listed if n.get("status") == "online"}


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_killed_supernode_is_restarted_and_rejoins(tmp_path: Path) -> None:
    server = ServerSettings(data_dir=tmp_path / "server", superlink_port=free_port())
    link = superlink_process(server)
    link.start()
    companion: SuperNodeCompanion | None = None
    try:
        assert wait_port(server.superlink_port, timeout=60)
        write_app(server)
        agent = AgentSettings(
            device_id="d1", data_dir=tmp_path / "agent", superlink_address=f"127.0.0.1:{server.superlink_port}"
        )
        companion = SuperNodeCompanion(agent)
        asyncio.run(companion.start())
        first: set[str] = set()
        assert wait_until(lambda: bool(first.update(online_nodes(server)) or first), 60)
        old_pid = companion.process.pid
        assert old_pid is not None

        os.kill(old_pid, signal.SIGKILL)

        process = companion.process
        assert wait_until(lambda: process.restarts == 1 and process.running() and process.pid != old_pid, 30)
        # An insecure SuperNode registers under a new node id after a restart.
        assert wait_until(lambda: bool(online_nodes(server) - first), 60)
    finally:
        if companion is not None:
            asyncio.run(companion.stop())
        link.stop()
    assert processes_mentioning(str(tmp_path)) == []
