"""The ClientApp worker against real Flower 1.42: SuperLink, SuperNode in ``--isolation process``.

The worker speaks Flower's internal task protocol (flwr is pinned exactly), so this test
runs a real Flower run through it: a probe app whose ClientApp reports the PID it runs in
and how many messages its module has handled, and fails on request. Every message must run
in the one worker process with the app kept loaded, a failing message must come back as an
error reply without taking the worker down, and an idle worker drops the app by
re-executing itself under the same PID.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.flower_nodes import superlink_and_node, wait_until
from tests.e2e.procs import processes_mentioning
from tests.edge_agent.federation.probe import submit_probe_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_worker_runs_every_message_in_one_process_and_survives_a_failure(tmp_path: Path) -> None:
    # The idle exit is longer than the SuperNode's 3 s poll between two messages.
    with superlink_and_node(tmp_path, device_id="probe", worker_idle_exit_s=8.0, clientapp_isolation="worker") as (
        server,
        companion,
    ):
        assert companion.worker is not None
        worker_pid = companion.worker.pid

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
    time.sleep(0.5)
    assert processes_mentioning(str(tmp_path)) == []
    workers = processes_mentioning("edge_agent.federation.worker")
    assert not [p for p in workers if p.split(":")[0] == str(worker_pid)]
