"""Whole twin runs through the CLI: reports, Byzantine robustness, determinism, a Ray cluster.

Three small runs (10 devices, 2 rounds) share the module: a compare of FedAvg against the
coordinate-wise median under a sign-flip attack, and the median scenario again on a
separately started Ray head (the address comes from the environment), which must give the
same figures as the local run. After the module no Ray process may be left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.net import free_port, wait_port
from shared.process import TAG_ENV, kill_tree, tagged
from simulations.twin.scenario import RAY_ADDRESS_ENV

# One Ray instance at a time on a machine (its session directory under /tmp is shared): under
# pytest-xdist every Ray user runs on the same worker (--dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.xdist_group("ray")]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
FEDAVG = HERE / "scenarios" / "byz-fedavg.toml"
MEDIAN = HERE / "scenarios" / "byz-median.toml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


HEAD_TAG_PREFIX = "twin-test-head-"
# Every twin run of this module carries this tag (ray_session nests its own under it), so the
# leftover check sees this module's processes only, not another suite's or benchmark's Ray.
MODULE_TAG = f"twin-tests-{uuid.uuid4().hex[:8]}"


def _twin_processes() -> list[str]:
    found = []
    for pid in sorted(tagged(MODULE_TAG)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"{pid}: {cmdline[:120]}")
    return found


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind() -> Iterator[None]:
    yield
    assert _twin_processes() == [], "Ray processes survived the twin runs"


def _twin(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "twin", *args, "--quiet"],
        cwd=ROOT,
        env={**(os.environ if env is None else env), TAG_ENV: MODULE_TAG},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _without_runtime(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in summary.items() if not k.startswith("_")}
    out["rounds"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in summary["rounds"]]
    return out


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare")
    result = _twin(["compare", str(FEDAVG), str(MEDIAN), "--out", str(out)])
    assert result["twin"] == "ok"
    assert Path(result["report"]) == out / "index.html"
    return out


@pytest.fixture(scope="module")
def runs(compare_dir: Path) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = json.loads((compare_dir / "summary.json").read_text())["compare"]
    return summary


def test_report_holds_valid_plots_referenced_by_the_html(compare_dir: Path, runs: dict[str, Any]) -> None:
    page = (compare_dir / "index.html").read_text()
    for name in ("holdout.png", "participation.png", "bytes.png", "time.png"):
        png = compare_dir / name
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 5_000  # a drawn figure, not an empty canvas
        assert f'src="{name}"' in page
    assert set(runs) == {"byz-fedavg", "byz-median"}
    for summary in runs.values():
        assert [r["round"] for r in summary["rounds"]] == [1, 2]
        for r in summary["rounds"]:
            assert r["participants"] == 10
            assert r["byzantine_participants"] == 3
            assert r["bytes_up"] == 10 * summary["model"]["exchanged_bytes"]
            assert r["simulated_s"] > 0
            assert r["baseline"]["auprc"] is not None
        assert summary["distribution"]["chunks"] >= 1


def test_fedavg_degrades_under_sign_flips_while_the_median_holds(runs: dict[str, Any]) -> None:
    fedavg, median = runs["byz-fedavg"], runs["byz-median"]
    start = fedavg["initial"]["auprc"]
    assert start == median["initial"]["auprc"]  # same data, same starting model
    fedavg_final = fedavg["final"]["holdout"]["auprc"]
    median_final = median["final"]["holdout"]["auprc"]
    positives_rate = fedavg["fleet"]["holdout_positives"] / fedavg["fleet"]["holdout_rows"]
    assert fedavg_final < start - 0.15, (start, fedavg_final)
    assert fedavg_final < 2 * positives_rate  # no better than ranking at random
    assert median_final > start - 0.05, (start, median_final)
    assert median_final > fedavg_final + 0.25


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A separate Ray head on a free port, as a cluster would be (tagged, so it is reaped)."""
    port = free_port()
    tag = f"{HEAD_TAG_PREFIX}{uuid.uuid4().hex[:8]}"
    env = {**os.environ, TAG_ENV: tag, "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(Path(sys.executable).parent / "ray")
    argv = [ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    head = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_port(port, timeout=120), "the Ray head did not listen"
        yield f"127.0.0.1:{port}"
    finally:
        survivors = kill_tree([head.pid], grace=5.0, tag=tag)
        head.wait(10)
        assert not survivors, f"the Ray head left processes behind: {sorted(survivors)}"


def test_same_seed_same_results_on_a_ray_cluster_named_by_the_environment(
    ray_head: str, runs: dict[str, Any], tmp_path: Path
) -> None:
    env = {**os.environ, RAY_ADDRESS_ENV: ray_head}
    env.pop("RAY_ADDRESS", None)
    result = _twin(["run", str(MEDIAN), "--out", str(tmp_path)], env=env)
    again = json.loads((tmp_path / "summary.json").read_text())
    engine = again["_runtime"]["engine"]
    assert engine["attached"] is True
    assert engine["ray_address"].rsplit(":", 1)[1] == ray_head.rsplit(":", 1)[1]
    assert result["auprc"] == runs["byz-median"]["final"]["holdout"]["auprc"]
    assert _without_runtime(again) == _without_runtime(runs["byz-median"])


def test_an_invalid_scenario_exits_2_and_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[partition]\naplha = 0.3\n')
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "twin", "run", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "partition.aplha: unknown key" in proc.stderr


def test_ray_users_are_grouped_on_one_xdist_worker(request: pytest.FixtureRequest) -> None:
    """pytest 9.2 broke xdist 3.8's groups (the @group suffix was silently dropped): pin both."""
    if os.environ.get("PYTEST_XDIST_WORKER") and request.config.getoption("dist", "no") == "loadgroup":
        assert request.node.nodeid.endswith("@ray"), request.node.nodeid
