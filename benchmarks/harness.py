"""What every benchmark script shares: repeats, medians, spreads, ratios, and the JSON they leave.

These machines are noisy, so a figure is never one timing: each side is repeated, the
median is the figure and the spread (min..max) says how much to trust it. fedforge and its
anchor are measured in the same run and compared by ratio, never against a fixed number.

A script is `python -m benchmarks.bench_<name> [--quick] [--out DIR]`. `--quick` (or
FEDFORGE_BENCH_QUICK=1) shrinks sizes and repeats so `make test` can run every script and
they never rot; quick figures are not written to results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# "lower" means smaller is better for both sides (times, memory); "higher" means larger is
# better (throughput). The ratio is always expressed so that > 1 means fedforge is better.
Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Sample:
    """Repeated observations of one quantity."""

    values: tuple[float, ...]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def describe(self) -> str:
        return f"{_fmt(self.median)} {self.unit} (spread {_fmt(self.low)}..{_fmt(self.high)}, n={len(self.values)})"


@dataclass(frozen=True)
class Figure:
    """One row of benchmarks/results.md: fedforge against its anchor, with the goal."""

    figure: str  # the figure number and short name, e.g. "1a scoring, batch 1"
    fedforge: Sample
    anchor: Sample | None
    anchor_name: str
    better: Better
    goal: str  # human text, e.g. "agent's path <= 2x the bare call"
    goal_met: bool | None  # None where the goal is not a ratio to this anchor or was not measured
    notes: str = ""
    extra: dict[str, float | str] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """> 1 means fedforge is better than the anchor (faster, smaller, higher throughput)."""
        if self.anchor is None or self.anchor.median == 0 or self.fedforge.median == 0:
            return None
        if self.better == "lower":
            return self.anchor.median / self.fedforge.median
        return self.fedforge.median / self.anchor.median

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def repeat(fn: Callable[[], float | None], *, repeats: int, warmup: int = 1, unit: str = "s") -> Sample:
    """Run `fn` warmup+repeats times; it returns its own measurement, or None to be timed here.

    Letting `fn` return the value lets a script time only the part that matters (excluding
    set-up) or report a throughput or a memory peak instead of wall time.
    """
    for _ in range(warmup):
        fn()
    values: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        measured = fn()
        elapsed = time.perf_counter() - start
        values.append(elapsed if measured is None else float(measured))
    return Sample(tuple(values), unit)


def interleaved(
    fns: Sequence[Callable[[], float | None]], *, repeats: int, warmup: int = 1, units: Sequence[str]
) -> list[Sample]:
    """Like `repeat` for several contenders, alternating them so drift hits all sides alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    values: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            measured = fn()
            elapsed = time.perf_counter() - start
            values[i].append(elapsed if measured is None else float(measured))
    return [Sample(tuple(v), u) for v, u in zip(values, units, strict=True)]


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats: proves the script runs")
    parser.add_argument(
        "--out", type=Path, default=None, help="directory for the JSON result (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    if os.environ.get("FEDFORGE_BENCH_QUICK") == "1":
        args.quick = True
    return args


def machine() -> dict[str, str]:
    """Enough about the machine to tell two results.md apart."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    except OSError:
        pass
    described = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")  # only a script that uses torch has a GPU to name
    if torch is not None and torch.cuda.is_available():
        described["accelerator"] = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return described


def write_result(script: str, figures: Sequence[Figure], *, quick: bool, out: Path | None = None) -> Path:
    """Print each figure and leave `<out>/<script>.json` for benchmarks.report to assemble."""
    for fig in figures:
        print(format_figure(fig))
    directory = out or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{script}.json"
    payload = {
        "script": script,
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "figures": [fig.to_json() for fig in figures],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def format_figure(fig: Figure) -> str:
    ratio = fig.ratio
    ratio_text = "n/a" if ratio is None else f"{ratio:.2f}x"
    met = {True: "goal met", False: "GOAL MISSED", None: "goal n/a"}[fig.goal_met]
    anchor = "" if fig.anchor is None else f" | {fig.anchor_name}: {fig.anchor.describe()}"
    return f"[{fig.figure}] fedforge: {fig.fedforge.describe()}{anchor} | ratio {ratio_text} | {fig.goal}: {met}"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"
