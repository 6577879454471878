"""Twin: seconds per simulated round with 1,000 virtual devices (the goal: <= 10 s on 2 cores).

fedforge's twin and Flower's Simulation Engine at its default settings run the same
workload in the same run: the deployment's ServerApp and the twin's ClientApp (the edge
ClientApp on per-device data) over the fraud MLP. The anchor is Flower as shipped: its
in-memory LinkState scans every stored message for every node (O(N²) per round) and each
virtual client asks for 2 CPUs (one actor on 2 cores). fedforge indexes the LinkState by
node and runs one single-threaded actor per core. Round 1 carries actor start-up and is
left out; the figure is the median over the later rounds. A second figure counts the CPU
seconds of the driver and every Ray process per round, which a loaded machine does not
inflate the way it inflates wall time (10 s on 2 idle cores is 20 CPU-s).
--quick: 20 devices, 2 rounds.
"""

from __future__ import annotations

import logging

from benchmarks.harness import Figure, Sample, parse_args, write_result
from simulations.twin.runner import run_scenario
from simulations.twin.scenario import Scenario, parse_scenario

GOAL_S = 10.0


def _scenario(devices: int, rounds: int) -> Scenario:
    return parse_scenario(
        {
            "name": f"bench-{devices}",
            "seed": 1,
            "devices": devices,
            "rounds": rounds,
            "data": {"dataset": "synthetic", "rows": max(200 * devices, 10_000)},
            "partition": {"kind": "dirichlet", "alpha": 0.5},
        },
        "bench_twin",
    )


def _round_seconds(scenario: Scenario, flower_defaults: bool) -> tuple[Sample, Sample]:
    summary = run_scenario(scenario, flower_defaults=flower_defaults, baseline=False)
    runtime = summary["_runtime"]  # round 1 starts the actors: left out
    return Sample(tuple(runtime["round_wall_s"][1:]), "s"), Sample(tuple(runtime["round_cpu_s"][1:]), "CPU-s")


def main() -> None:
    args = parse_args(__doc__ or "")
    logging.basicConfig(level=logging.WARNING)
    devices = 20 if args.quick else 1000
    ours, ours_cpu = _round_seconds(_scenario(devices, 2 if args.quick else 4), flower_defaults=False)
    anchor, anchor_cpu = _round_seconds(_scenario(devices, 2), flower_defaults=True)
    anchor_name = "Flower 1.42 simulation, default settings"
    notes = "fraud MLP, 1 local epoch, Dirichlet(0.5) partitions; round 1 (actor start) excluded"
    figures = [
        Figure(
            figure=f"twin s/round, {devices} virtual devices",
            fedforge=ours,
            anchor=anchor,
            anchor_name=anchor_name,
            better="lower",
            goal=f"<= {GOAL_S:.0f} s per round at 1,000 devices",
            goal_met=None if args.quick else ours.median <= GOAL_S,
            notes=notes,
        ),
        Figure(
            figure=f"twin CPU-s/round, {devices} virtual devices",
            fedforge=ours_cpu,
            anchor=anchor_cpu,
            anchor_name=anchor_name,
            better="lower",
            goal=f"<= {2 * GOAL_S:.0f} CPU-s per round at 1,000 devices (10 s on 2 idle cores)",
            goal_met=None if args.quick else ours_cpu.median <= 2 * GOAL_S,
            notes=notes,
        ),
    ]
    write_result("bench_twin", figures, quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
