"""Flower node authentication with real processes: only registered keys join, and keep their id."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.federation.node_key import public_key_path
from edge_agent.federation.supernode import SuperNodeCompanion
from server.config import ServerSettings
from server.federation.flower import superlink_process, write_app
from server.federation.node_auth import ACTION_REGISTER, register_device, unregister_device
from server.registry.memory import InMemoryRegistry
from shared.net import free_port, wait_port
from shared.process import ManagedProcess
from tests.e2e.flower_nodes import listed_nodes, online, wait_until
from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def make_certs(out: Path) -> Path:
    """A CA and a server certificate for the loopback names, with the project's own script."""
    script = REPO / "deploy" / "pki" / "make-certs.sh"
    subprocess.run(["bash", str(script), str(out), "localhost,127.0.0.1"], check=True, capture_output=True)
    return out


def rejoins_after(signum: int, server: ServerSettings, process: ManagedProcess, node_id: str) -> None:
    """Signal the SuperNode; its supervisor restarts it and it activates again under ``node_id``."""
    online_at = listed_nodes(server)[node_id]["online-at"]
    old_pid, restarts = process.pid, process.restarts
    assert old_pid is not None
    os.kill(old_pid, signum)
    assert wait_until(lambda: process.restarts > restarts and process.pid != old_pid, 60)
    assert wait_until(lambda: listed_nodes(server).get(node_id, {}).get("online-at") != online_at, 240)
    assert online(server) == {node_id}
    assert set(listed_nodes(server)) == {node_id}


def test_only_registered_supernodes_join_and_keep_their_node_id(tmp_path: Path) -> None:
    pki = make_certs(tmp_path / "pki")
    server = ServerSettings(
        data_dir=tmp_path / "server",
        superlink_port=free_port(),
        supernode_auth=True,
        superlink_ca_file=pki / "ca.crt",
        superlink_cert_file=pki / "broker.crt",
        superlink_key_file=pki / "broker.key",
    )
    agent = AgentSettings(
        device_id="d1",
        data_dir=tmp_path / "agent",
        superlink_address=f"127.0.0.1:{server.superlink_port}",
        superlink_ca_file=pki / "ca.crt",
        supernode_key=tmp_path / "agent" / "node.key",
        federation_mode="always",  # the always-on SuperNode: restarted under the same node id
    )
    registry = InMemoryRegistry()
    link = superlink_process(server)
    link.start()
    companion: SuperNodeCompanion | None = None
    try:
        assert wait_port(server.superlink_port, timeout=60)
        write_app(server)
        companion = SuperNodeCompanion(agent)  # creates the key pair on first start
        assert agent.supernode_key is not None
        assert stat.S_IMODE(agent.supernode_key.stat().st_mode) == 0o600
        assert public_key_path(agent.supernode_key).read_text().startswith("ecdsa-sha2-nistp384 ")
        asyncio.run(companion.start())
        process = companion.process

        # (a) Not registered: the SuperLink refuses it; it exits and is retried, never listed.
        assert wait_until(lambda: process.restarts >= 2, 120)
        assert listed_nodes(server) == {}

        # Positive control: once its key is registered, the retried SuperNode comes online.
        node_id = register_device(server, registry, public_key_path(agent.supernode_key), name="d1")
        assert wait_until(lambda: online(server) == {node_id}, 180)
        audit = [e for e in registry.list_audit() if e.action == ACTION_REGISTER]
        assert [e.detail["node_id"] for e in audit] == [node_id]

        # (b) A killed SuperNode is restarted and comes back under the same node id. The old
        # session stays "online" until its heartbeat lapses; a new activation is waited for.
        rejoins_after(signal.SIGKILL, server, process, node_id)
        # (c) So does one that leaves gracefully, as the in-node worker's idle exit makes it
        # (Flower's SIGTERM handler: DeactivateNode).
        rejoins_after(signal.SIGTERM, server, process, node_id)

        # Unregistered: the key is refused from now on and the node leaves the federation.
        unregister_device(server, registry, node_id)
        assert wait_until(lambda: node_id not in online(server), 120)
    finally:
        if companion is not None:
            asyncio.run(companion.stop())
        link.stop()
        registry.close()
    assert processes_mentioning(str(tmp_path)) == []
