"""The SuperLink's view of its SuperNodes, through the flwr CLI, for tests on real Flower."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_agent.config import AgentSettings
from edge_agent.federation.supernode import SuperNodeCompanion
from server.config import ServerSettings
from server.federation.flower import (
    CONNECTION,
    executable,
    flower_env,
    flwr_home,
    superlink_process,
    write_connection_config,
)
from shared.net import free_port, wait_port


def listed_nodes(settings: ServerSettings) -> dict[str, dict[str, Any]]:
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
        return {}
    return {str(n["node-id"]): n for n in json.loads(proc.stdout[start:]).get("nodes", [])}


def online(settings: ServerSettings) -> set[str]:
    return {node_id for node_id, n in listed_nodes(settings).items() if n.get("status") == "online"}


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@contextmanager
def superlink_and_node(tmp_path: Path, **agent: Any) -> Iterator[tuple[ServerSettings, SuperNodeCompanion]]:
    """A real SuperLink and one agent's SuperNode companion (``agent``: its settings), online; both stopped after.

    The companion is the always-on SuperNode (``federation_mode = "always"``, set here since
    the agent's default is on_demand): it runs from start to stop, whatever the fleet's call.
    """
    server = ServerSettings(data_dir=tmp_path / "server", superlink_port=free_port())
    link = superlink_process(server)
    link.start()
    companion: SuperNodeCompanion | None = None
    try:
        assert wait_port(server.superlink_port, timeout=60)
        write_connection_config(server)
        settings = AgentSettings(
            data_dir=tmp_path / "agent",
            superlink_address=f"127.0.0.1:{server.superlink_port}",
            **{"federation_mode": "always", **agent},
        )
        companion = SuperNodeCompanion(settings)
        asyncio.run(companion.start())
        assert wait_until(lambda: len(online(server)) == 1, 90)
        yield server, companion
    finally:
        if companion is not None:
            asyncio.run(companion.stop())
        link.stop()
