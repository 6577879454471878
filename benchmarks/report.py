"""Assemble benchmarks/results.md from the JSON each script left in benchmarks/results/."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS_DIR, _fmt

RESULTS_MD = Path(__file__).resolve().parent / "results.md"


def _cell(sample: dict[str, Any] | None) -> str:
    if sample is None:
        return "—"
    values = [float(v) for v in sample["values"]]
    values.sort()
    median = (
        values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    )
    return f"{_fmt(median)} {sample['unit']} ({_fmt(values[0])}..{_fmt(values[-1])})"


def _describe(machine: tuple[tuple[str, str], ...]) -> str:
    about = dict(machine)
    text = f"{about.get('cpu', '?')}, {about.get('cores', '?')} cores, {about.get('memory', '?')}"
    if "accelerator" in about:
        text += f", {about['accelerator']}"
    return f"{text}, Python {about.get('python', '?')}"


def _machines(runs: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], list[str]]:
    """The machines the runs were measured on, most scripts first, each with its scripts."""
    machines: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run["machine"].items() if k != "platform"))
        machines.setdefault(key, []).append(run.get("script", "?"))
    return dict(sorted(machines.items(), key=lambda item: -len(item[1])))


def render(results_dir: Path = RESULTS_DIR) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    runs = [r for r in runs if not r.get("quick")]
    lines = ["# Benchmark results", ""]
    if not runs:
        return "\n".join([*lines, "No full run recorded yet: `make bench`.", ""])
    machines = _machines(runs)
    machine = next(iter(machines))
    lines += [
        "Written by `make bench` (benchmarks/report.py); every figure is the median of repeated runs,",
        "with the spread (min..max) in parentheses, and fedforge and its anchor were measured in the same run.",
        "Ratio > 1 means fedforge is better (faster, smaller, or higher throughput).",
        "",
        f"Machine: {_describe(machine)}",
        "",
        "| figure | fedforge | anchor | anchor value | ratio | goal | met | date |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for fig in run["figures"]:
            ratio = fig.get("ratio")
            met = {True: "yes", False: "**no**", None: "—"}[fig.get("goal_met")]
            lines.append(
                f"| {fig['figure']} | {_cell(fig['fedforge'])} | {fig['anchor_name']} | {_cell(fig.get('anchor'))} "
                f"| {'—' if ratio is None else f'{ratio:.2f}×'} | {fig['goal']} | {met} | {run['date']} |"
            )
    if len(machines) > 1:  # figure 5 from a lent GPU machine, say, beside the rest from make bench
        lines += ["", "## Machines", ""]
        lines += [f"- {_describe(m)}: {', '.join(scripts)}" for m, scripts in machines.items()]
    notes = [(fig["figure"], fig["notes"]) for run in runs for fig in run["figures"] if fig.get("notes")]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- **{name}**: {text}" for name, text in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    results_dir = Path(args[0]) if args else RESULTS_DIR
    RESULTS_MD.write_text(render(results_dir))
    print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
