"""A run that cannot gather min_agents fails with the reason, on real parts, and hangs nothing.

Mosquitto, `fedforge server` + SuperLink, one agent (on-demand, the default) and a run that
needs two: the agent joins when the run's call reaches it, nobody else does, and after
``join_wait_s`` the ServerApp records the run as failed ("1 of 2 needed joined") where
Flower's node sampling would wait forever. `fedforge train` reports it and exits 1, the API
shows the same reason, the ServerApp ends the call (the agent stops its SuperNode again),
and nothing is left running once the fleet is stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_server_settings
from shared.process import descendants
from simulations.demo import prepare_split
from simulations.fleet import LocalFleet
from tests.e2e.flower_nodes import online
from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]

JOIN_WAIT_S = 10.0


def test_a_run_short_of_min_agents_fails_with_the_count_and_leaves_nothing(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    split_dir = prepare_split(tmp_path / "split", n_agents=1, synthetic=12_000, seed=5)
    fleet = LocalFleet(
        tmp_path / "fleet",
        mosquitto.url,
        split_dir,
        n_agents=1,
        min_agents=2,
        fleet="short",
        bootstrap_epochs=1,
        finetune_epochs=0,
        server_settings={"join_wait_s": JOIN_WAIT_S},
        agent_settings={"federation_idle_stop_s": 0.0},  # federation_mode: the default, on_demand
    )
    try:
        fleet.write_configs()
        fleet.start_server()
        server = load_server_settings(fleet.server_config)
        fleet.start_agents()
        fleet.wait_serving(1)

        summary = fleet.train(rounds=2, timeout=600.0)
        reason = f"too few agents: 1 of 2 needed joined within {JOIN_WAIT_S:g} s"
        assert summary["exit_code"] == 1, summary
        assert summary["status"] == "failed", summary
        assert summary["error"].startswith(reason), summary
        assert summary["rounds"] == []
        assert summary["flower_status"].startswith("finished"), summary
        run = fleet.get(f"/api/runs/{summary['run_id']}")
        assert (run["status"], run["error"]) == ("failed", summary["error"])

        # The ServerApp ended the call in its finally: the agent stops the SuperNode it started.
        agent_pid = fleet.agents[0].process.pid
        assert agent_pid is not None
        fleet.wait_for(lambda: not descendants(agent_pid), 60, "the agent to stop its SuperNode after the run")
        fleet.wait_for(lambda: online(server) == set(), 90, "the SuperLink to list no online node")
        assert fleet.agents[0].process.running()
    finally:
        fleet.stop()
    assert processes_mentioning(str(tmp_path)) == []
