"""``fedforge users`` and ``fedforge tokens`` against a real registry database, then the API with them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.api.app import auth_service_for, create_app
from server.cli import run_command
from server.config import load_server_settings
from server.registry.auth_sql import SqlAuthStore
from server.registry.sql import SqlRegistry


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return path


def _run(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, list[dict[str, object]]]:
    code = run_command(argv[0], [*argv[1:], "--config", str(config)])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


def test_first_admin_token_and_login_through_the_api(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    code, out = _run(capsys, config, "users", "create", "root", "--role", "admin", "--password-stdin")
    assert code == 0
    assert out == [{**out[0], "username": "root", "role": "admin", "disabled": False, "can_log_in": True}]
    code, out = _run(capsys, config, "tokens", "create", "--user", "root", "--name", "ci")
    assert code == 0
    token, token_id = str(out[0]["token"]), str(out[0]["token_id"])
    assert token.startswith("fft_")
    code, listed = _run(capsys, config, "tokens", "list")
    assert [t["token_id"] for t in listed] == [token_id]
    assert "token" not in listed[0]
    code, users = _run(capsys, config, "users", "list")
    assert [u["username"] for u in users] == ["root"]

    settings = load_server_settings(config)
    registry = SqlRegistry(settings.database_url)
    try:
        auth = auth_service_for(settings, SqlAuthStore(registry.engine), registry)
        client = TestClient(create_app(settings, registry, auth))
        assert client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).json()["role"] == "admin"
        login = client.post("/api/auth/login", json={"username": "root", "password": "a-long-password"})
        assert login.status_code == 200
        assert _run(capsys, config, "tokens", "revoke", token_id)[0] == 0
        assert client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert _run(capsys, config, "users", "disable", "root")[0] == 0
        assert client.get("/api/auth/me").status_code == 401  # the session ended with the user
        actions = [e.action for e in reversed(registry.list_audit())]
        assert actions[:3] == ["user.created", "token.created", "auth.login"]
        assert actions[-2:] == ["token.revoked", "user.disabled"]
    finally:
        registry.close()


def test_usage_errors_exit_2_and_refusals_exit_1(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no prompt possible
    assert _run(capsys, config, "users", "create", "ann", "--role", "viewer")[0] == 2
    assert _run(capsys, config, "users", "disable")[0] == 2
    assert _run(capsys, config, "tokens", "create")[0] == 2
    assert _run(capsys, config, "tokens", "create", "--user", "ghost")[0] == 1
    assert _run(capsys, config, "tokens", "revoke", "tok-nope")[0] == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert _run(capsys, config, "users", "create", "ann", "--password-stdin")[0] == 1  # too short
    assert _run(capsys, config, "users", "create", "bot", "--role", "operator", "--no-password")[0] == 0
    assert _run(capsys, config, "users", "create", "bot", "--no-password")[0] == 1  # exists
