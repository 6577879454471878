"""An agent's SuperNode that dies is restarted and joins the SuperLink again (real Flower)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.e2e.flower_nodes import online, superlink_and_node, wait_until
from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_killed_supernode_is_restarted_and_rejoins(tmp_path: Path) -> None:
    with superlink_and_node(tmp_path, device_id="d1") as (server, companion):
        first = online(server)
        old_pid = companion.process.pid
        assert old_pid is not None

        os.kill(old_pid, signal.SIGKILL)

        process = companion.process
        assert wait_until(lambda: process.restarts == 1 and process.running() and process.pid != old_pid, 30)
        # An insecure SuperNode registers under a new node id after a restart.
        assert wait_until(lambda: bool(online(server) - first), 60)
    assert processes_mentioning(str(tmp_path)) == []
