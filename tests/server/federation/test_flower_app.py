"""The Flower app directory and connection config, read back with Flower's own parsers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from flwr.cli.config_utils import load_and_validate
from flwr.cli.flower_config import read_superlink_connection

from server.config import ServerSettings
from server.federation.flower import (
    APP_CONFIG_KEYS,
    CONNECTION,
    flower_env,
    flwr_home,
    superlink_process,
    write_app,
)


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(data_dir=tmp_path / "server", superlink_host="127.0.0.1", superlink_port=19092)


def test_app_pyproject_is_valid_for_flower(settings: ServerSettings) -> None:
    app_dir = write_app(settings)
    # check_module=True: Flower imports both component references as `flwr run` would.
    config, _warnings = load_and_validate(app_dir / "pyproject.toml", check_module=True)
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "server.federation.server_app:app",
        "clientapp": "edge_agent.federation.client_app:app",
    }
    assert tuple(app["config"]) == APP_CONFIG_KEYS
    assert app["publisher"] == "fedforge"


def test_connection_config_names_the_superlink(settings: ServerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    write_app(settings)
    monkeypatch.setenv("FLWR_HOME", str(flwr_home(settings)))
    default = read_superlink_connection()
    named = read_superlink_connection(CONNECTION)
    for conn in (default, named):
        assert conn.name == CONNECTION
        assert conn.address == "127.0.0.1:19092"
        assert conn.insecure is True


def test_write_app_is_idempotent(settings: ServerSettings) -> None:
    first = (write_app(settings) / "pyproject.toml").read_text()
    assert (write_app(settings) / "pyproject.toml").read_text() == first


def test_flwr_home_defaults_under_data_dir(tmp_path: Path) -> None:
    assert flwr_home(ServerSettings(data_dir=tmp_path)) == tmp_path / "flwr"
    assert flwr_home(ServerSettings(data_dir=tmp_path, flwr_home=tmp_path / "elsewhere")) == tmp_path / "elsewhere"


def test_flower_env_is_offline_quiet_and_finds_the_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", raising=False)
    env = flower_env(tmp_path / "home")
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.1"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_flower_env_keeps_an_explicit_poll_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.5")
    assert flower_env(tmp_path)["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.5"


def test_superlink_process_argv(settings: ServerSettings) -> None:
    proc = superlink_process(settings)
    assert Path(proc.argv[0]).name == "flower-superlink"
    assert proc.argv[1:] == ["--insecure", "--host", "127.0.0.1", "--port", "19092"]
    assert proc.env["FLWR_HOME"] == str(flwr_home(settings))
    assert proc.log_path == settings.data_dir / "logs" / "superlink.log"
    assert not proc.running()


def test_run_config_names_the_strategy_and_refuses_unknown_ones(tmp_path: Path) -> None:
    from server.federation.flower import FlowerRunError, run_config_text

    text = run_config_text(tmp_path / "server.toml", "run-1", 2, 3, "trimmed-mean")
    assert "strategy='trimmed-mean'" in text
    assert "num-rounds=2" in text
    assert "min-agents=3" in text
    with pytest.raises(FlowerRunError, match="unknown strategy"):
        run_config_text(tmp_path / "server.toml", "run-1", 2, 3, "bogus")
