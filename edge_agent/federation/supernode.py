"""The agent's Flower SuperNode and its ClientApp worker, supervised as an agent companion.

The SuperNode is a separate daemon (Flower's own process model); the agent starts it,
restarts it if it dies, and stops its whole process tree on shutdown. The ClientApp finds
the agent's store through ``--node-config``. With a node key (``supernode_key``) a
SuperNode the server has not registered exits (Flower exit code 305) and the supervisor
keeps retrying with backoff, so it joins soon after the operator registers it; after a
crash it is refused the same way until the SuperLink has declared the old session offline
(two missed 30 s heartbeats), then rejoins under the same node id.

How the ClientApp runs (``clientapp_isolation``): by default (``"in_node"``) the SuperNode
runs with ``--isolation process`` and executes every message itself, in a worker thread of
its own process (``supernode_launcher --worker-runtime-api``) with the app and torch kept
loaded; ``"worker"`` runs that worker (``edge_agent.federation.worker``) as a second
supervised child instead, so a ClientApp that crashes its interpreter leaves the node up,
at ~110 MB more per agent during a run; ``"subprocess"`` is Flower's default (a
``flower-superexec`` child that starts one ``flwr-clientapp`` per message).

The SuperNode itself is Flower's, started through ``edge_agent.federation.supernode_launcher``
so that it polls the SuperLink fast while a run is on and at Flower's 3 s when idle
(``supernode_fast_window_s = 0`` keeps Flower's waits), stops when the agent is gone and
holds early signals; ``supernode_entry = "flower"`` starts Flower's ``flower-supernode``
as shipped instead. This module imports no flwr: the agent process stays light.
"""

from __future__ import annotations

import asyncio
import os
import sys

from edge_agent.config import AgentSettings
from edge_agent.federation.node_key import ensure_node_key
from shared.flower_env import flower_env, lean_node_env, venv_executable
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


def supernode_command(settings: AgentSettings, port: int) -> list[str]:
    """Flower's ``flower-supernode`` entry point behind fedforge's launcher, or as shipped."""
    if settings.supernode_entry == "flower":
        return [venv_executable("flower-supernode")]
    in_node = settings.clientapp_isolation == "in_node"
    argv = [
        sys.executable,
        "-m",
        "edge_agent.federation.supernode_launcher",
        "--fast-poll",
        str(settings.supernode_fast_poll_s),
        "--fast-window",
        str(settings.supernode_fast_window_s),
    ]
    if in_node:
        argv += ["--worker-runtime-api", f"127.0.0.1:{port}"]
        # Dropping torch restarts this node (it cannot unload in place), and a restarted
        # insecure node rejoins under a new id. On demand the node stops with the run
        # anyway, so it never restarts itself in the middle of one.
        if settings.worker_idle_exit_s is not None and settings.federation_mode == "always":
            argv += ["--idle-exit", str(settings.worker_idle_exit_s)]
    # The agent: if it dies, even SIGKILLed outside systemd, the node (and in "subprocess"
    # mode Flower's SuperExec, which watches the node the same way) does not live on.
    argv += ["--parent-pid", str(os.getpid())]
    return [*argv, "--"]


def supernode_argv(settings: AgentSettings, port: int | None = None) -> list[str]:
    if not settings.superlink_address:
        raise ValueError("superlink_address is not set")
    # Each SuperNode serves its ClientApps on a local port; two on one host must differ.
    # The Runtime API is plaintext on loopback in every isolation mode.
    port = port or settings.supernode_port or free_port()
    node_config = f"store-path='{settings.db_path.resolve()}' device-id='{settings.device_id}'"
    argv = supernode_command(settings, port) + supernode_security_args(settings)
    argv += ["--superlink", settings.superlink_address, "--node-config", node_config]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    if settings.clientapp_isolation in ("in_node", "worker"):
        argv += ["--isolation", "process"]
    return argv


def worker_argv(settings: AgentSettings, port: int) -> list[str]:
    argv = [sys.executable, "-m", "edge_agent.federation.worker", "--runtime-api-address", f"127.0.0.1:{port}"]
    if settings.worker_idle_exit_s is not None:
        argv += ["--idle-exit", str(settings.worker_idle_exit_s)]
    argv += ["--parent-pid", str(os.getpid())]
    return argv


class SuperNodeCompanion:
    """Agent companion (async start/stop) running the SuperNode and, in ``"worker"`` mode, its worker."""

    def __init__(self, settings: AgentSettings) -> None:
        home = settings.data_dir / "flwr"
        home.mkdir(parents=True, exist_ok=True)
        if settings.supernode_key is not None:
            ensure_node_key(settings.supernode_key)
        port = settings.supernode_port or free_port()
        # One compute thread per process (shared/flower_env.py LEAN_NODE_ENV: measured effect).
        env = lean_node_env(flower_env(home))
        self.process = ManagedProcess(
            f"flower-supernode[{settings.device_id}]",
            supernode_argv(settings, port),
            env=env,
            log_path=settings.data_dir / "supernode.log",
        )
        self.worker: ManagedProcess | None = None
        if settings.clientapp_isolation == "worker":
            self.worker = ManagedProcess(
                f"clientapp-worker[{settings.device_id}]",
                worker_argv(settings, port),
                env=env,
                log_path=settings.data_dir / "clientapp-worker.log",
            )

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.process] + ([self.worker] if self.worker is not None else [])

    async def start(self) -> None:
        for process in self.processes:
            await asyncio.to_thread(process.start)

    async def stop(self) -> None:
        for process in reversed(self.processes):
            await asyncio.to_thread(process.stop)
