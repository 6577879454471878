"""The SuperLink's view of its SuperNodes, through the flwr CLI, for tests on real Flower."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from server.config import ServerSettings
from server.federation.flower import CONNECTION, executable, flower_env, flwr_home


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
