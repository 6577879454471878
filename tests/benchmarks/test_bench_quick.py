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
