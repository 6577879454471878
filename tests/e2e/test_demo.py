"""The demo path itself, as `make demo` runs it (on generated data, one round)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


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
    assert _processes_mentioning(str(workdir)) == []
