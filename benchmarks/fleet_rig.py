"""A real local fleet for the round and memory benchmarks, in fedforge's or Flower's default setup.

One server (SuperLink, registry, embedded broker) stays up; the agents are restarted
with the settings of each side:

- ``FEDFORGE``: the defaults of fedforge (one train exchange per round pulled every 0.1 s,
  the long-running ClientApp worker under ``--isolation process``, the SuperNode's
  adaptive poll of the SuperLink);
- ``FLOWER``: Flower's defaults on the same app, model and data (``Strategy.start``, a
  train and an evaluate exchange per round with ``send_and_receive``'s 3 s pull poll, a
  ``flwr-clientapp`` process per message, SuperExec task poll 1 s, Flower's stock
  ``flower-supernode`` with its 3 s idle poll).

Both run the SuperNode always (``federation_mode = "always"``, set explicitly: the agent's
default is ``"on_demand"``), so a round's time is the round's alone; figure 8 measures the
on-demand default beside them (benchmarks/bench_agent_memory.py).

Each agent's store is filled with labelled records before it starts, so a round trains on
a tiny local epoch (one batch): what is timed is the deployment's overhead, and the
training compute measured inside the ClientApp (``compute-s``) is subtracted as well.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.pipeline import CleanRecord
from edge_agent.store import SqliteAgentStore
from server.config import load_server_settings
from server.federation.flower import CONNECTION, flwr_home, write_connection_config
from shared.datasets.split import read_agent_parts
from shared.flower_env import flower_env, venv_executable
from shared.process import reap_orphans
from shared.tasks.fraud_spec import FEATURES, LABEL
from simulations.broker import EmbeddedBroker
from simulations.demo import prepare_split
from simulations.fleet import FleetError, LocalFleet

log = logging.getLogger(__name__)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass(frozen=True)
class Side:
    name: str
    server_settings: dict[str, Any]
    agent_settings: dict[str, Any]
    agent_env: dict[str, str] = field(default_factory=dict)


FEDFORGE = Side(
    "fedforge", {"round_exchange": "fedforge"}, {"clientapp_isolation": "in_node", "federation_mode": "always"}
)
FLOWER = Side(
    "flower-defaults",
    {"round_exchange": "flower"},
    {"clientapp_isolation": "subprocess", "supernode_entry": "flower", "federation_mode": "always"},
    {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"},  # Flower's default; fedforge's environment sets 0.1
)


@dataclass
class RoundTiming:
    run: int
    round: int
    seconds: float
    compute_s: float

    @property
    def overhead_s(self) -> float:
        return self.seconds - self.compute_s


class BenchFleet:
    """Server + N agents on loopback; ``use(side)`` (re)starts the agents in that side's setup."""

    def __init__(self, root: Path, n_agents: int, *, labelled: int = 256, rows: int = 12_000) -> None:
        self.root = root
        self.n_agents = n_agents
        self.labelled = labelled
        self.rows = rows
        self.broker = EmbeddedBroker()
        self.fleet: LocalFleet | None = None
        self.side: Side | None = None
        self.runs = 0

    def __enter__(self) -> BenchFleet:
        # SIGTERM (a timeout, an impatient caller) unwinds like Ctrl-C, so every child is stopped.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self.broker.start()
        try:
            split = prepare_split(self.root / "split", self.n_agents, synthetic=self.rows, seed=5)
            self.fleet = LocalFleet(
                self.root / "fleet",
                self.broker.url,
                split,
                n_agents=self.n_agents,
                fleet="bench",
                bootstrap_epochs=1,
                finetune_epochs=0,
                local_epochs=1,
                heartbeat_s=5.0,
            )
            self.fleet.write_configs()
            self._fill_stores(split)
            self.fleet.start_server()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.fleet is not None:
                self.fleet.stop()
                self.reap()
        finally:
            self.broker.stop()

    def reap(self) -> None:
        """Reap the zombies this process inherits: the fleet made it a subreaper, so a helper
        whose parent died first (a SuperNode tree's, as its agent stops; the ``flwr log`` of a
        finished ``fedforge train``) is re-parented here, and no Popen waits for it. Call it
        between steps, from the thread that runs this rig's other commands."""
        for pid in reap_orphans():
            log.info("reaped orphaned process %d", pid)

    @property
    def local(self) -> LocalFleet:
        if self.fleet is None:
            raise FleetError("the bench fleet is not started")
        return self.fleet

    def _fill_stores(self, split: Path) -> None:
        for device, part in zip(self.local.device_ids, read_agent_parts(split), strict=True):
            rows = part.head(self.labelled)
            values = rows.loc[:, list(FEATURES)].to_numpy(dtype=np.float64)
            store = SqliteAgentStore(self.local.root / "agents" / device / "agent.db")
            try:
                store.add_records(
                    [CleanRecord(f"b{i}", float(i), tuple(float(v) for v in row)) for i, row in enumerate(values)]
                )
                store.add_labels([(f"b{i}", int(label)) for i, label in enumerate(rows[LABEL])])
            finally:
                store.close()

    def use(self, side: Side, timeout: float = 180.0) -> None:
        """Agents (re)started with ``side``'s settings; returns once every SuperNode is online
        (none, for agents in on-demand federation: they start theirs when a run calls them)."""
        fleet = self.local
        fleet.stop_agents()
        self.reap()  # a SuperNode tree's helpers that outlived their agent
        self.wait_nodes(0, timeout)
        self.reap()  # and those whose last threads were still exiting then
        fleet.server_settings = dict(side.server_settings)
        fleet.agent_settings = dict(side.agent_settings)
        fleet.agent_env = dict(side.agent_env)
        fleet.write_configs()
        fleet.start_agents()
        version = fleet.latest_version()
        if version is not None:
            fleet.wait_serving(version, timeout)
        on_demand = side.agent_settings.get("federation_mode") == "on_demand"
        self.wait_nodes(0 if on_demand else self.n_agents, timeout)
        self.side = side

    def online_nodes(self) -> int:
        settings = load_server_settings(self.local.server_config)
        write_connection_config(settings)
        proc = subprocess.run(
            [venv_executable("flwr"), "supernode", "list", CONNECTION, "--format", "json"],
            env=flower_env(flwr_home(settings)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        start = proc.stdout.find("{")
        nodes = json.loads(proc.stdout[start:]).get("nodes", []) if start >= 0 else []
        return sum(1 for n in nodes if n.get("status") == "online")

    def wait_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.online_nodes() != count:
            if time.monotonic() > deadline:
                raise FleetError(f"the SuperLink does not list {count} online SuperNodes after {timeout:.0f} s")
            time.sleep(1.0)

    def train(self, rounds: int) -> list[RoundTiming]:
        """One training run; the per-round wall time (ServerApp side) and the slowest agent's compute."""
        summary = self.local.train(rounds, timeout=600.0)
        self.reap()
        self.runs += 1
        listed = self.local.get(f"/api/rounds?run_id={summary.get('run_id')}") or []
        if len(listed) != rounds:
            raise FleetError(f"run {summary.get('run_id')} recorded {len(listed)} of {rounds} rounds: {summary}")
        return [
            RoundTiming(
                run=self.runs,
                round=int(r["round"]),
                seconds=float(r["duration_s"]),
                compute_s=float(r.get("metrics", {}).get("train_compute-s-max", 0.0)),
            )
            for r in sorted(listed, key=lambda r: int(r["round"]))
        ]
