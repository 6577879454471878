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
