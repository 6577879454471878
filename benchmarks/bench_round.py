"""Figure 6: deployment round overhead on loopback, fedforge against Flower's defaults.

Both sides run the same ServerApp and ClientApp (same model, same data, same agents and
SuperLink): fedforge's round design (one train exchange per round pulled every 0.1 s,
the long-running ClientApp worker, the SuperNode's adaptive poll) against Flower's
default configuration (``Strategy.start``: train + evaluate exchanges with
``send_and_receive``, a process per message, the stock SuperNode, default polls). A
round's overhead is its wall time in the ServerApp (from configuring the round to the
holdout evaluation of its aggregate, as the registry records it) minus the slowest
agent's training compute, measured inside the ClientApp. Each agent trains one batch, so
that compute is a few milliseconds either way.

The first round of a run also loads the app on every node (FAB install, imports, torch):
steady rounds (2..N) make figure 6, round 1 is reported beside it. Runs of both sides
alternate, so drift on this shared machine hits both alike. Both sides keep their SuperNode
up (``federation_mode = "always"``, benchmarks/fleet_rig.py): with the agent's default,
``"on_demand"``, a run's round 1 also waits for the SuperNodes the call starts.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from benchmarks.fleet_rig import FEDFORGE, FLOWER, BenchFleet, RoundTiming, Side
from benchmarks.harness import Figure, Sample, parse_args, write_result

GOAL_S = 5.0


def sample(timings: list[RoundTiming], *, first: bool) -> Sample:
    chosen = [t for t in timings if (t.round == 1) == first] or timings
    return Sample(tuple(max(0.0, t.overhead_s) for t in chosen), "s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    agents, runs, rounds = (1, 1, 1) if args.quick else (5, 2, 4)
    timings: dict[str, list[RoundTiming]] = {FEDFORGE.name: [], FLOWER.name: []}
    with tempfile.TemporaryDirectory(prefix="fedforge-bench-round-") as tmp, BenchFleet(Path(tmp), agents) as rig:
        order: list[Side] = [FEDFORGE, FLOWER]
        for run in range(runs):
            for side in order if run % 2 == 0 else list(reversed(order)):
                if rig.side != side:
                    rig.use(side)
                got = rig.train(rounds)
                timings[side.name] += got
                print(side.name, [f"{t.round}: {t.seconds:.2f} s ({t.compute_s * 1000:.0f} ms compute)" for t in got])
    ours, theirs = timings[FEDFORGE.name], timings[FLOWER.name]
    steady = rounds > 1
    fedforge, anchor = sample(ours, first=not steady), sample(theirs, first=not steady)
    what = "steady rounds (2..N)" if steady else "round 1 only (quick)"
    figures = [
        Figure(
            figure=f"6 round overhead, {agents} agents, loopback",
            fedforge=fedforge,
            anchor=anchor,
            anchor_name="Flower defaults, same app",
            better="lower",
            goal=f"<= {GOAL_S:.0f} s per round",
            goal_met=fedforge.median <= GOAL_S,
            notes=(
                f"{what}; {runs} runs x {rounds} rounds per side, alternating; wall time of the round in the "
                "ServerApp minus the slowest agent's training compute (one batch). fedforge (federation_mode = always, "
                "not the agent's on_demand default): one train exchange, "
                "replies pulled every 0.1 s, long-running ClientApp worker in the SuperNode's process "
                "(--isolation process), SuperNode pulling every 0.2 s for 30 s after a message (supernode_launcher). "
                "Flower: Strategy.start "
                "(train + evaluate exchanges, 3 s pull poll), flwr-clientapp per message, SuperExec poll 1 s, "
                "stock flower-supernode (3 s idle poll). Where the rest goes: benchmarks/README-round.md."
            ),
            extra={
                "round_s_fedforge": statistics.median(t.seconds for t in ours),
                "round_s_flower": statistics.median(t.seconds for t in theirs),
                "compute_s_fedforge": statistics.median(t.compute_s for t in ours),
                "compute_s_flower": statistics.median(t.compute_s for t in theirs),
            },
        )
    ]
    if steady:
        first_ours, first_theirs = sample(ours, first=True), sample(theirs, first=True)
        figures.append(
            Figure(
                figure=f"6b first round of a run, {agents} agents",
                fedforge=first_ours,
                anchor=first_theirs,
                anchor_name="Flower defaults, same app",
                better="lower",
                goal="reported (app load on every node)",
                goal_met=None,
                notes="round 1 includes the FAB install and the ClientApp import (torch) on every node.",
            )
        )
    write_result("bench_round", figures, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
