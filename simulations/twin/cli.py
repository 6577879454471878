"""``fedforge twin run SCENARIO.toml`` and ``fedforge twin compare A.toml B.toml``.

Progress goes to stderr (a rich progress bar, or plain lines when stderr is not a
terminal); stdout gets one JSON line with the outcome and the report's path, so scripts
can read it. Exit codes as everywhere: 0, 1 runtime failure, 2 bad scenario or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.errors import ConfigError, DatasetError
from simulations.twin.errors import TwinError
from simulations.twin.hosted import RoundRecord
from simulations.twin.report import INDEX_FILE, METRIC, write_report
from simulations.twin.runner import run_scenario
from simulations.twin.scenario import Scenario, load_scenario

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_OUT = Path("twin-reports")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedforge twin", description="the digital twin of the fleet")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="simulate one scenario and write its report")
    run.add_argument("scenario", type=Path)
    run.add_argument("--out", type=Path, default=None, help=f"report directory (default {DEFAULT_OUT}/NAME)")
    run.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    compare = sub.add_parser("compare", help="simulate two scenarios and report them side by side")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    compare.add_argument("--out", type=Path, default=None, help=f"report directory (default {DEFAULT_OUT}/A-vs-B)")
    for p in (run, compare):
        p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


@contextmanager
def _progress(name: str, rounds: int, quiet: bool) -> Iterator[tuple[Any, Any]]:
    """Callbacks (on_round, on_phase) that draw a progress bar on stderr."""
    console = Console(stderr=True)
    if quiet:
        yield (None, None)
        return
    if not console.is_terminal:

        def line_round(rnd: int, total: int, rec: RoundRecord) -> None:
            if rnd:
                auprc = rec.holdout.get(METRIC, float("nan"))
                console.print(
                    f"[{name}] round {rnd}/{total}: AUPRC {auprc:.4f}, "
                    f"{rec.participants} aggregated, {rec.wall_s:.1f} s",
                    markup=False,
                    highlight=False,
                )

        yield (line_round, lambda text: console.print(f"[{name}] {text}", markup=False, highlight=False))
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(name, total=rounds, info="")

        def on_round(rnd: int, total: int, rec: RoundRecord) -> None:
            if rnd:
                auprc = rec.holdout.get(METRIC, float("nan"))
                bar.update(
                    task,
                    completed=rnd,
                    info=f"AUPRC {auprc:.4f} · {rec.participants} aggregated · {rec.wall_s:.1f} s/round",
                )

        yield (on_round, lambda text: bar.update(task, info=text))


def _run_one(scenario: Scenario, quiet: bool) -> dict[str, Any]:
    with _progress(scenario.name, scenario.rounds, quiet) as (on_round, on_phase):
        return run_scenario(scenario, on_round=on_round, on_phase=on_phase)


def _outcome(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    fin = summary["final"]
    return {
        "scenario": name,
        METRIC: fin["holdout"].get(METRIC),
        f"centralized_{METRIC}": fin["baseline"].get(METRIC),
        "simulated_s": round(fin["simulated_s"], 3),
        "bytes_up": fin["bytes_up"],
        "round_wall_s": [round(w, 3) for w in summary["_runtime"]["round_wall_s"]],
        "round_cpu_s": [round(c, 3) for c in summary["_runtime"]["round_cpu_s"]],
    }


def twin_command(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    try:
        if args.action == "run":
            scenario = load_scenario(args.scenario)
            if args.seed is not None:
                scenario = scenario.model_copy(update={"seed": args.seed})
            summary = _run_one(scenario, args.quiet)
            out = args.out or DEFAULT_OUT / scenario.name
            index = write_report({scenario.name: summary}, out, f"fedforge twin: {scenario.name}")
            result = {"twin": "ok", "report": str(index), **_outcome(scenario.name, summary)}
        else:
            a, b = load_scenario(args.a), load_scenario(args.b)
            if a.name == b.name:
                raise ConfigError(f"both scenarios are named {a.name!r}: give them distinct names to compare")
            runs = {s.name: _run_one(s, args.quiet) for s in (a, b)}
            out = args.out or DEFAULT_OUT / f"{a.name}-vs-{b.name}"
            index = write_report(runs, out, f"fedforge twin: {a.name} vs {b.name}")
            result = {"twin": "ok", "report": str(index), "runs": [_outcome(n, s) for n, s in runs.items()]}
    except ConfigError as exc:
        sys.stderr.write(f"fedforge twin: {exc}\n")
        return EXIT_USAGE
    except (TwinError, DatasetError) as exc:
        sys.stderr.write(f"fedforge twin: {exc}\n")
        return EXIT_FAILURE
    sys.stdout.write(json.dumps(result) + "\n")
    return EXIT_OK


def run_command(name: str, argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if name != "twin":
        raise SystemExit(f"simulations.twin.cli cannot run {name!r}")
    return twin_command(argv)


__all__ = ["INDEX_FILE", "run_command", "twin_command"]
