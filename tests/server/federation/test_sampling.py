"""A round's wait for its SuperNodes is bounded, on a real SuperLink (flwr 1.42 waits forever).

A probe ServerApp on a real SuperLink with no SuperNode asks both strategy families for a
later round's train messages with two nodes needed: each gives up after its node wait with
``TooFewAgentsError`` naming 0 of 2, where Flower's ``sample_nodes`` would never return.
The whole run path (a fleet whose agents do not all join) is tests/e2e/test_too_few_agents.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.config import ServerSettings
from server.federation.flower import superlink_process, write_connection_config
from server.federation.sampling import TooFewAgentsError
from shared.net import free_port, wait_port
from tests.e2e.flower_nodes import wait_until
from tests.edge_agent.federation.probe import submit_app_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


APP = """\
import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from server.federation.sampling import TooFewAgentsError
from server.federation.strategies import build_strategy
from server.federation.strategy import SanitizedFedAvg

client = ClientApp()
server = ServerApp()


@server.main()
def main(grid, context):
    out = {}
    for name, strategy in (
        ("sanitized", SanitizedFedAvg(min_nodes=2, node_wait_s=1.0)),
        ("catalog", build_strategy("median", min_nodes=2, node_wait_s=1.0)),
    ):
        try:
            messages = list(strategy.configure_train(3, ArrayRecord(), ConfigRecord(), grid))
            out[name] = {"messages": len(messages)}
        except TooFewAgentsError as exc:
            out[name] = {"connected": exc.connected, "needed": exc.needed, "round": exc.server_round, "error": str(exc)}
    Path(str(context.run_config["out"])).write_text(json.dumps(out))
"""


def test_a_later_round_gives_up_on_missing_nodes_after_the_node_wait(tmp_path: Path) -> None:
    server = ServerSettings(data_dir=tmp_path / "server", superlink_port=free_port())
    link = superlink_process(server)
    link.start()
    try:
        assert wait_port(server.superlink_port, timeout=60)
        write_connection_config(server)
        out = tmp_path / "out.json"
        submit_app_run(server, tmp_path / "app", "sampling_app", APP, out)
        # Generous: the ServerApp process starts (imports flwr, torch) before it waits 2 x 1 s.
        assert wait_until(out.exists, 180), "the probe ServerApp wrote nothing: it still waits for nodes"
        result = json.loads(out.read_text())
    finally:
        link.stop()
    for name in ("sanitized", "catalog"):
        assert {k: result[name][k] for k in ("connected", "needed", "round")} == {
            "connected": 0,
            "needed": 2,
            "round": 3,
        }
        assert "0 of 2 needed connected for round 3 within 1 s" in result[name]["error"]


def test_the_reason_names_who_joined_of_how_many() -> None:
    assert str(TooFewAgentsError(1, 3, 30.0)).startswith("too few agents: 1 of 3 needed joined within 30 s")
