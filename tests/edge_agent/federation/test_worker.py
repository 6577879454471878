"""The ClientApp worker against real Flower 1.42: SuperLink, SuperNode in ``--isolation process``.

The worker speaks Flower's internal task protocol (flwr is pinned exactly), so this test
runs a real Flower run through it: a probe app whose ClientApp reports the PID it runs in
and how many messages its module has handled, and fails on request. Every message must run
in the one worker process with the app kept loaded, a failing message must come back as an
error reply without taking the worker down, and an idle worker drops the app by
re-executing itself under the same PID.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from edge_agent.config import AgentSettings
from edge_agent.federation.supernode import SuperNodeCompanion
from server.config import ServerSettings
from server.federation.flower import superlink_process, write_connection_config
from shared.net import free_port, wait_port
from tests.e2e.flower_nodes import online, wait_until
from tests.e2e.procs import processes_mentioning
from tests.edge_agent.federation.probe import submit_probe_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_worker_runs_every_message_in_one_process_and_survives_a_failure(tmp_path: Path) -> None:
    server = ServerSettings(data_dir=tmp_path / "server", superlink_port=free_port())
    link = superlink_process(server)
    link.start()
    companion: SuperNodeCompanion | None = None
    try:
        assert wait_port(server.superlink_port, timeout=60)
        write_connection_config(server)
        agent = AgentSettings(
            device_id="probe",
            data_dir=tmp_path / "agent",
            superlink_address=f"127.0.0.1:{server.superlink_port}",
            worker_idle_exit_s=8.0,  # longer than the SuperNode's 3 s poll between two messages
        )
        companion = SuperNodeCompanion(agent)
        asyncio.run(companion.start())
        assert companion.worker is not None
        worker_pid = companion.worker.pid
        assert wait_until(lambda: len(online(server)) == 1, 90)

        out = submit_probe_run(server, tmp_path)
        assert wait_until(out.exists, 180), (tmp_path / "agent" / "clientapp-worker.log").read_text()[-3000:]

        first, failed, third = json.loads(out.read_text())
        assert first == {"pid": worker_pid, "handled": 1}
        assert "probe failure on request" in failed["error"]
        # Same process, module state kept: the app was loaded once and survived the failure.
        assert third == {"pid": worker_pid, "handled": 3}
        assert companion.worker.running()

        # Idle: the worker drops the app by re-executing itself; the supervisor sees no exit.
        log = tmp_path / "agent" / "clientapp-worker.log"
        assert wait_until(lambda: "dropping the loaded ClientApp" in log.read_text(), 30)
        assert companion.worker.pid == worker_pid
        assert companion.worker.running()
        assert companion.worker.restarts == 0
    finally:
        if companion is not None:
            asyncio.run(companion.stop())
        link.stop()
    time.sleep(0.5)
    assert processes_mentioning(str(tmp_path)) == []
    workers = processes_mentioning("edge_agent.federation.worker")
    assert not [p for p in workers if p.split(":")[0] == str(worker_pid)]
