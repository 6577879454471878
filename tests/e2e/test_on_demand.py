"""On-demand federation on real parts: Mosquitto, `fedforge server` + SuperLink, two agents.

The agents run with ``federation_mode = "on_demand"``: idle, neither has a SuperNode (nor a
ClientApp worker) and the SuperLink lists no node; a training run started through the API
calls them, both join and train in round 1, and once the run has ended their SuperNode
trees are gone again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_server_settings
from shared.datasets.split import read_agent_parts
from shared.process import descendants
from simulations.demo import prepare_split
from simulations.fleet import FleetError, LocalFleet
from simulations.replay import Replayer
from tests.e2e.flower_nodes import online
from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]


def _describe(pids: set[int]) -> list[str]:
    """pid, state (Z: a zombie nobody reaped) and command line, for a failure message."""
    out = []
    for pid in sorted(pids):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append(f"{pid} {state} {cmd[:150]}")
    return out


def test_on_demand_agents_join_a_run_only_while_it_lasts(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    split_dir = prepare_split(tmp_path / "split", n_agents=2, synthetic=12_000, seed=4)
    fleet = LocalFleet(
        tmp_path / "fleet",
        mosquitto.url,
        split_dir,
        n_agents=2,
        fleet="ondemand",
        bootstrap_epochs=1,
        finetune_epochs=0,
        # The test is about who takes part, not about the model: the gate lets the run publish.
        server_settings={"max_auprc_regression": 1.0},
        agent_settings={"federation_mode": "on_demand", "federation_idle_stop_s": 0.0},
    )
    try:
        fleet.write_configs()
        fleet.start_server()
        server = load_server_settings(fleet.server_config)
        fleet.start_agents()
        fleet.wait_serving(1)
        parts = read_agent_parts(split_dir)
        streams = dict(zip(fleet.device_ids, parts, strict=True))
        Replayer(mosquitto.url, "ondemand", streams, rate=0, batch=250, label_delay=0.5, limit=600).run(until_done=True)
        fleet.wait_labelled(min(600, *(len(p) for p in parts)))

        pids = {a.device_id: a.process.pid for a in fleet.agents}
        assert all(pid is not None for pid in pids.values())
        # Idle: the agent alone, nothing below it, nothing at the SuperLink.
        assert {device: descendants(pid) for device, pid in pids.items() if pid} == {d: set() for d in pids}
        assert online(server) == set()

        run = fleet.start_run(rounds=1)
        assert run["status"] == "succeeded", run
        assert run["round_metrics"][0]["participants"] == 2

        # The ServerApp ended the call: each agent stops its SuperNode and worker.
        try:
            fleet.wait_for(
                lambda: all(not descendants(pid) for pid in pids.values() if pid),
                60,
                "the agents to stop their SuperNodes after the run",
            )
        except FleetError as exc:
            left = {device: _describe(descendants(pid)) for device, pid in pids.items() if pid}
            raise AssertionError(f"{exc}; still below the agents: {left}") from exc
        fleet.wait_for(lambda: online(server) == set(), 90, "the SuperLink to list no online node")
        assert all(a.process.running() for a in fleet.agents)
    finally:
        fleet.stop()
    assert processes_mentioning(str(tmp_path)) == []
