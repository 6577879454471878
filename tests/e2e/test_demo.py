"""The demo path itself, as `make demo` runs it (on generated data, one round)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.procs import processes_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_prints_the_verdict_and_leaves_nothing_behind(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "demo",
            "--synthetic",
            "20000",
            "--records",
            "2000",
            "--rounds",
            "1",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    verdict = json.loads(proc.stdout.strip().splitlines()[-1])
    assert verdict["demo"] == "ok"
    assert verdict["agents"] == 3
    assert verdict["rounds"] == 1
    version = verdict["published_version"]
    assert version == 2
    assert verdict["serving"] == {"device-1": version, "device-2": version, "device-3": version}
    assert verdict["signature_verified"] is True
    assert verdict["holdout"]["final"]["auprc"] >= verdict["holdout"]["initial"]["auprc"]
    records = verdict["records"]
    assert records["scored"] == records["ingested"] > 0
    assert records["quarantined"] == 3 * 10  # the demo's faulty payloads, every one caught
    assert processes_mentioning(str(workdir)) == []
