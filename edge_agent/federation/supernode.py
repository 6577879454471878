"""The agent's Flower SuperNode, supervised as an agent companion.

The SuperNode is a separate daemon (Flower's own process model); the agent starts it,
restarts it if it dies, and stops its whole process tree on shutdown. The ClientApp that
the SuperNode launches finds the agent's store through ``--node-config``. With a node key
(``supernode_key``) a SuperNode the server has not registered exits (Flower exit code 305)
and the supervisor keeps retrying with backoff, so it joins soon after the operator registers
it; after a crash it is refused the same way until the SuperLink has declared the old
session offline (two missed 30 s heartbeats), then rejoins under the same node id.
"""

from __future__ import annotations

import asyncio

from edge_agent.config import AgentSettings
from edge_agent.federation.node_key import ensure_node_key
from shared.flower_env import flower_env, venv_executable
from shared.net import free_port
from shared.process import ManagedProcess


def supernode_security_args(settings: AgentSettings) -> list[str]:
    """``--insecure`` by default; TLS with the SuperLink's CA, plus the node key when one is set."""
    if settings.superlink_ca_file is None:
        return ["--insecure"]
    argv = ["--root-certificates", str(settings.superlink_ca_file.resolve())]
    if settings.supernode_key is not None:
        argv += ["--auth-supernode-private-key", str(settings.supernode_key.resolve())]
    return argv


def supernode_argv(settings: AgentSettings) -> list[str]:
    if not settings.superlink_address:
        raise ValueError("superlink_address is not set")
    node_config = f"store-path='{settings.db_path.resolve()}' device-id='{settings.device_id}'"
    argv = [venv_executable("flower-supernode"), *supernode_security_args(settings)]
    argv += ["--superlink", settings.superlink_address, "--node-config", node_config]
    # Each SuperNode serves its ClientApps on a local port; two on one host must differ.
    argv += ["--host", "127.0.0.1", "--port", str(settings.supernode_port or free_port())]
    return argv


class SuperNodeCompanion:
    """Agent companion (async start/stop) running ``flower-supernode``."""

    def __init__(self, settings: AgentSettings) -> None:
        home = settings.data_dir / "flwr"
        home.mkdir(parents=True, exist_ok=True)
        if settings.supernode_key is not None:
            ensure_node_key(settings.supernode_key)
        self.process = ManagedProcess(
            f"flower-supernode[{settings.device_id}]",
            supernode_argv(settings),
            env=flower_env(home),
            log_path=settings.data_dir / "supernode.log",
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.process.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.process.stop)
