"""Every benchmark script runs in quick mode and leaves well-formed figures (no timing asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import render

ROOT = Path(__file__).resolve().parents[2]
# bench_twin starts Ray: on the same pytest-xdist worker as the twin's tests (--dist loadgroup).
SCRIPTS = [
    pytest.param(name, marks=pytest.mark.xdist_group("ray")) if name == "bench_twin" else name
    for name in sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_quick_and_reports_both_sides(script: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{script}.json").read_text())
    assert result["quick"] is True
    assert result["figures"], "a benchmark must report at least one figure"
    for fig in result["figures"]:
        values = fig["fedforge"]["values"]
        assert values
        assert all(math.isfinite(v) and v >= 0 for v in values)
        if fig["anchor"] is not None:
            assert all(math.isfinite(v) and v >= 0 for v in fig["anchor"]["values"])
        assert fig["figure"] in proc.stdout  # each figure is printed with its ratio


def test_report_skips_quick_runs(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"quick": True, "figures": []}))
    assert "No full run recorded yet" in render(tmp_path)


def full_run(script: str, machine: dict[str, str], figure: str) -> dict[str, object]:
    sample = {"values": [1.0, 2.0, 3.0], "unit": "s"}
    return {
        "script": script,
        "quick": False,
        "date": "2026-11-29 18:00:00 UTC",
        "machine": machine,
        "figures": [
            {"figure": figure, "fedforge": sample, "anchor": sample, "anchor_name": "anchor", "ratio": 1.0}
            | {"goal": "<= 2x", "goal_met": True}
        ],
    }


def test_report_names_each_machine_when_a_figure_came_from_another(tmp_path: Path) -> None:
    # make bench here, figure 5 from a lent GPU machine (benchmarks/device/README.md).
    here = {"cpu": "AMD EPYC", "cores": "2", "memory": "24 GiB", "python": "3.11.7", "platform": "a"}
    there = {"cpu": "Intel Xeon", "cores": "16", "memory": "128 GiB", "python": "3.12.3", "platform": "b"}
    there["accelerator"] = "NVIDIA H200, torch 2.11.0"
    for script, machine in [("bench_a", here), ("bench_b", here), ("bench_aggregation_gpu", there)]:
        (tmp_path / f"{script}.json").write_text(json.dumps(full_run(script, machine, f"figure of {script}")))
    report = render(tmp_path)
    assert "Machine: AMD EPYC, 2 cores, 24 GiB, Python 3.11.7" in report
    assert "- AMD EPYC, 2 cores, 24 GiB, Python 3.11.7: bench_a, bench_b" in report
    assert "- Intel Xeon, 16 cores, 128 GiB, NVIDIA H200, torch 2.11.0, Python 3.12.3: bench_aggregation_gpu" in report
    assert "| figure of bench_aggregation_gpu |" in report


def test_report_of_one_machine_lists_no_machines_section(tmp_path: Path) -> None:
    here = {"cpu": "AMD EPYC", "cores": "2", "memory": "24 GiB", "python": "3.11.7", "platform": "a"}
    (tmp_path / "bench_a.json").write_text(json.dumps(full_run("bench_a", here, "a figure")))
    assert "## Machines" not in render(tmp_path)


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks" / "device").glob("*.sh")), ids=lambda p: p.name)
def test_device_scripts_are_valid_bash(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_gpu_check_refuses_to_run_without_a_results_folder() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device" / "gpu_check.sh")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "set OUT" in proc.stderr


def test_the_gpu_check_says_which_script_fetches_the_wheels_when_none_were_carried(tmp_path: Path) -> None:
    # A copy of the script in a tree without .whl/, as on a device call that forgot carry.
    script = tmp_path / "benchmarks" / "device" / "gpu_check.sh"
    script.parent.mkdir(parents=True)
    script.write_text((ROOT / "benchmarks" / "device" / "gpu_check.sh").read_text())
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 3
    assert "fetch_wheels.sh" in proc.stderr
