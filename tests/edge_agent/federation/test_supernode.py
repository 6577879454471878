"""The SuperNode command line and environment, checked with Flower's own node-config parser."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from edge_agent.config import AgentSettings
from edge_agent.federation.supernode import SuperNodeCompanion, supernode_argv
from shared.errors import ConfigError
from shared.flower_env import flower_env as supernode_env


def settings(tmp_path: Path, **extra: object) -> AgentSettings:
    return AgentSettings(device_id="dev-7", data_dir=tmp_path / "agent dir", **extra)  # type: ignore[arg-type]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_argv_points_at_the_superlink_and_the_store(tmp_path: Path) -> None:
    s = settings(tmp_path, superlink_address="10.0.0.5:9092", supernode_port=9201)
    argv = supernode_argv(s)
    assert argv[:3] == [sys.executable, "-m", "edge_agent.federation.supernode_launcher"]
    assert "--insecure" in argv
    assert option(argv, "--superlink") == "10.0.0.5:9092"
    assert option(argv, "--host") == "127.0.0.1"
    assert option(argv, "--port") == "9201"
    # The SuperNode parses --node-config with this function; a path with a space survives.
    node_config = parse_config_args([option(argv, "--node-config")])
    assert node_config == {"store-path": str(s.db_path.resolve()), "device-id": "dev-7"}


def test_without_a_port_each_supernode_gets_a_free_one(tmp_path: Path) -> None:
    s = settings(tmp_path, superlink_address="127.0.0.1:9092")
    port = int(option(supernode_argv(s), "--port"))
    assert 0 < port < 65536


def test_argv_needs_a_superlink_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="superlink_address"):
        supernode_argv(settings(tmp_path))


def test_env_is_offline_quiet_and_finds_the_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", raising=False)
    env = supernode_env(tmp_path / "flwr")
    assert env["FLWR_HOME"] == str(tmp_path / "flwr")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.1"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "1")
    assert supernode_env(tmp_path)["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "1"


def launcher_options(argv: list[str]) -> list[str]:
    return argv[3 : argv.index("--")]


def test_in_node_mode_runs_the_worker_inside_the_supernode_process(tmp_path: Path) -> None:
    s = settings(tmp_path, superlink_address="127.0.0.1:9092", supernode_port=9301)
    assert s.clientapp_isolation == "in_node"  # the default
    companion = SuperNodeCompanion(s)
    argv = companion.process.argv
    assert argv[:3] == [sys.executable, "-m", "edge_agent.federation.supernode_launcher"]
    assert option(argv, "--isolation") == "process"
    # The worker thread takes its tasks from the node's own Runtime API port.
    assert option(argv, "--worker-runtime-api") == "127.0.0.1:9301"
    assert option(argv, "--port") == "9301"
    assert int(option(argv, "--parent-pid")) == os.getpid()
    # On demand (the default) the node stops with the run: it never restarts itself to drop torch.
    assert "--idle-exit" not in argv
    assert companion.worker is None
    assert companion.processes == [companion.process]


def test_in_node_mode_drops_torch_by_restarting_only_when_always_on(tmp_path: Path) -> None:
    s = settings(tmp_path, superlink_address="127.0.0.1:9092", federation_mode="always")
    assert float(option(supernode_argv(s), "--idle-exit")) == s.worker_idle_exit_s
    kept = s.model_copy(update={"worker_idle_exit_s": None})
    assert "--idle-exit" not in supernode_argv(kept)


def test_in_node_mode_keeps_the_launcher_with_flowers_waits(tmp_path: Path) -> None:
    # Window 0 means Flower's waits; the worker thread still needs the launcher's process.
    s = settings(tmp_path, superlink_address="127.0.0.1:9092", supernode_fast_window_s=0.0)
    argv = supernode_argv(s, port=9302)
    assert option(argv, "--fast-window") == "0.0"
    assert option(argv, "--worker-runtime-api") == "127.0.0.1:9302"
    stock = s.model_copy(update={"clientapp_isolation": "worker", "supernode_entry": "flower"})
    assert Path(supernode_argv(stock, port=9302)[0]).name == "flower-supernode"


def test_flowers_own_supernode_cannot_host_the_in_node_worker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='supernode_entry "flower"'):
        settings(tmp_path, supernode_entry="flower")  # the default isolation is "in_node"
    for isolation in ("worker", "subprocess"):
        s = settings(
            tmp_path, superlink_address="127.0.0.1:9092", supernode_entry="flower", clientapp_isolation=isolation
        )
        argv = supernode_argv(s, port=9303)
        assert Path(argv[0]).name == "flower-supernode"
        assert "--parent-pid" not in argv  # Flower's command line as shipped


def test_worker_mode_runs_the_supernode_in_process_isolation_beside_a_worker(tmp_path: Path) -> None:
    s = settings(tmp_path, superlink_address="127.0.0.1:9092", supernode_port=9301, clientapp_isolation="worker")
    companion = SuperNodeCompanion(s)
    assert option(companion.process.argv, "--isolation") == "process"
    assert companion.worker is not None
    worker = companion.worker.argv
    assert worker[:3] == [sys.executable, "-m", "edge_agent.federation.worker"]
    # The worker takes its tasks from the SuperNode's own Runtime API port.
    assert option(worker, "--runtime-api-address") == "127.0.0.1:9301"
    assert float(option(worker, "--idle-exit")) == s.worker_idle_exit_s
    assert companion.processes == [companion.process, companion.worker]
    assert companion.worker.log_path == s.data_dir / "clientapp-worker.log"
    own = ["--fast-poll", "0.2", "--fast-window", "30.0", "--parent-pid", str(os.getpid())]
    assert launcher_options(companion.process.argv) == own


def test_subprocess_mode_is_flowers_default_without_a_worker(tmp_path: Path) -> None:
    s = settings(tmp_path, superlink_address="127.0.0.1:9092", clientapp_isolation="subprocess")
    companion = SuperNodeCompanion(s)
    assert "--isolation" not in companion.process.argv
    assert companion.worker is None
    assert companion.processes == [companion.process]


def test_companion_supervises_the_supernode_without_starting_it(tmp_path: Path) -> None:
    s = settings(tmp_path, superlink_address="127.0.0.1:9092", supernode_port=9300)
    companion = SuperNodeCompanion(s)
    assert companion.process.argv == supernode_argv(s)
    assert companion.process.env["FLWR_HOME"] == str(s.data_dir / "flwr")
    assert companion.process.log_path == s.data_dir / "supernode.log"
    assert (s.data_dir / "flwr").is_dir()
    assert not companion.process.running()


def test_supernode_and_worker_run_with_one_compute_thread_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "4")  # an operator's setting wins
    companion = SuperNodeCompanion(settings(tmp_path, superlink_address="127.0.0.1:9092"))
    for process in companion.processes:
        assert process.env["OMP_NUM_THREADS"] == "1"
        assert process.env["MKL_NUM_THREADS"] == "4"
        assert process.env["FLWR_TELEMETRY_ENABLED"] == "0"
