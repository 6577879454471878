"""An agent's SuperNode that dies is restarted and joins the SuperLink again (real Flower)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.federation.supernode import SuperNodeCompanion
from server.config import ServerSettings
from server.federation.flower import superlink_process, write_app
from shared.net import free_port, wait_port
from tests.e2e.flower_nodes import online, wait_until
from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
        assert wait_until(lambda: bool(first.update(online(server)) or first), 60)
        old_pid = companion.process.pid
        assert old_pid is not None

        os.kill(old_pid, signal.SIGKILL)

        process = companion.process
        assert wait_until(lambda: process.restarts == 1 and process.running() and process.pid != old_pid, 30)
        # An insecure SuperNode registers under a new node id after a restart.
        assert wait_until(lambda: bool(online(server) - first), 60)
    finally:
        if companion is not None:
            asyncio.run(companion.stop())
        link.stop()
    assert processes_mentioning(str(tmp_path)) == []
