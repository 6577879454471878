"""Server settings: defaults derived from data_dir, TOML and environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_server_settings
from shared.errors import ConfigError


def test_paths_default_from_data_dir(tmp_path: Path) -> None:
    s = load_server_settings(data_dir=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'registry.db'}"
    assert s.signing_key == tmp_path / "keys" / "operator.pem"
    assert s.signing_public_key == tmp_path / "keys" / "operator.pub.pem"
    assert (s.superlink_port, s.http_port, s.device) == (9092, 8080, "auto")


def test_toml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text(
        f'data_dir = "{tmp_path}"\nfleet = "plant-7"\ndatabase_url = "postgresql+psycopg://u@db/x"\n'
        f'bootstrap_data = "{tmp_path / "boot.parquet"}"\n'
    )
    monkeypatch.setenv("FEDFORGE_HTTP_PORT", "9000")
    s = load_server_settings(conf)
    assert (s.fleet, s.http_port) == ("plant-7", 9000)
    assert s.database_url == "postgresql+psycopg://u@db/x"
    assert s.bootstrap_data == tmp_path / "boot.parquet"
    assert s.signing_key == tmp_path / "keys" / "operator.pem"


def test_invalid_settings_are_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text('http_port = "many"\n')
    with pytest.raises(ConfigError, match="http_port"):
        load_server_settings(conf)
    with pytest.raises(ConfigError, match="not found"):
        load_server_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("round_timeout_s = inf", "round_timeout_s"),
        ("command_ttl_s = inf", "command_ttl_s"),
        ("join_wait_s = inf", "join_wait_s"),
        ("session_ttl_s = inf", "session_ttl_s"),
        ("online_window_s = inf", "online_window_s"),
        ("login_window_s = inf", "login_window_s"),
        ("local_lr = inf", "local_lr"),
        ("max_auprc_regression = inf", "max_auprc_regression"),
        ("round_timeout_s = 1e300", "round_timeout_s"),  # finite, but overflows run_lifetime_s
        ("command_ttl_s = 1e308", "command_ttl_s"),
    ],
)
def test_infinite_nan_or_absurd_durations_are_a_config_error(tmp_path: Path, line: str, field: str) -> None:
    """They loaded, then broke the signed federation call and rollback commands with a 500."""
    conf = tmp_path / "server.toml"
    conf.write_text(f'data_dir = "{tmp_path}"\n{line}\n')
    with pytest.raises(ConfigError, match=field):
        load_server_settings(conf)


def test_an_infinite_duration_from_the_environment_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDFORGE_ROUND_TIMEOUT_S", "inf")
    with pytest.raises(ConfigError, match="round_timeout_s: Input should be a finite number"):
        load_server_settings(data_dir=tmp_path)


def test_a_year_long_duration_still_loads(tmp_path: Path) -> None:
    s = load_server_settings(data_dir=tmp_path, command_ttl_s=365 * 86400.0, round_timeout_s=86400.0)
    assert s.run_lifetime_s(1000) < float("inf")
