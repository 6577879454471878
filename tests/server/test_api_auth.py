"""Login, sessions and CSRF over HTTP; user and token management by an admin."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.api.security import CSRF_HEADER, SESSION_COOKIE
from server.auth import LoginThrottle
from server.config import ServerSettings
from server.registry import InMemoryRegistry
from tests.server.auth_support import PASSWORD, Identities, identities


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def ids(registry: InMemoryRegistry) -> Identities:
    return identities(registry)


def _client(ids: Identities, registry: InMemoryRegistry, tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(create_app(ServerSettings(data_dir=tmp_path, **settings), registry, ids.auth))  # type: ignore[arg-type]


@pytest.fixture
def client(ids: Identities, registry: InMemoryRegistry, tmp_path: Path) -> TestClient:
    return _client(ids, registry, tmp_path)


def _login(client: TestClient, user: str = "operator") -> str:
    response = client.post("/api/auth/login", json={"username": user, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == user
    assert body["role"] == user
    return str(body["csrf_token"])


def test_login_sets_a_strict_httponly_cookie_and_me_returns_the_csrf_token(client: TestClient) -> None:
    response = client.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD})
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie
    me = client.get("/api/auth/me").json()
    assert me == {"username": "viewer", "role": "viewer", "via": "session", "csrf_token": response.json()["csrf_token"]}


def test_secure_cookie_when_configured(ids: Identities, registry: InMemoryRegistry, tmp_path: Path) -> None:
    client = _client(ids, registry, tmp_path, cookie_secure=True)
    response = client.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD})
    assert "Secure" in response.headers["set-cookie"]


@pytest.mark.parametrize(
    "body", [{"username": "viewer", "password": "wrong-wrong"}, {"username": "ghost", "password": PASSWORD}]
)
def test_wrong_credentials_are_one_401(client: TestClient, registry: InMemoryRegistry, body: dict[str, str]) -> None:
    response = client.post("/api/auth/login", json=body)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthenticated", "detail": "wrong user name or password"}
    assert SESSION_COOKIE not in response.cookies
    assert registry.list_audit()[0].action == "auth.login_failed"


def test_repeated_failures_are_throttled_with_429(ids: Identities, registry: InMemoryRegistry, tmp_path: Path) -> None:
    ids.auth.throttle = LoginThrottle(max_failures=2, window_s=300.0)
    client = _client(ids, registry, tmp_path)
    for _ in range(2):
        assert client.post("/api/auth/login", json={"username": "admin", "password": "guess-guess"}).status_code == 401
    throttled = client.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1


def test_malformed_login_is_422_not_500(client: TestClient) -> None:
    assert client.post("/api/auth/login", json={"username": "x"}).status_code == 422
    assert (
        client.post("/api/auth/login", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )


def test_cookie_mutation_needs_the_csrf_header(client: TestClient) -> None:
    csrf = _login(client, "admin")
    body = {"username": "newbie", "role": "viewer"}
    refused = client.post("/api/users", json=body)
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    wrong = client.post("/api/users", json=body, headers={CSRF_HEADER: "not-it"})
    assert wrong.status_code == 403
    assert client.post("/api/users", json=body, headers={CSRF_HEADER: csrf}).status_code == 201
    assert client.get("/api/users").status_code == 200  # reads need no CSRF header


def test_bearer_mutation_needs_no_csrf_header(client: TestClient, ids: Identities) -> None:
    response = client.post("/api/users", json={"username": "newbie", "role": "viewer"}, headers=ids.bearer("admin"))
    assert response.status_code == 201


def test_logout_needs_csrf_then_ends_the_session(client: TestClient) -> None:
    csrf = _login(client, "viewer")
    assert client.post("/api/auth/logout").status_code == 403
    response = client.post("/api/auth/logout", headers={CSRF_HEADER: csrf})
    assert response.status_code == 200
    assert response.json()["logged_out"] is True
    client.cookies.clear()
    assert client.get("/api/auth/me").status_code == 401


def test_stale_cookie_and_bad_bearer_are_401(client: TestClient, ids: Identities) -> None:
    client.cookies.set(SESSION_COOKIE, "forged")
    assert client.get("/api/models").status_code == 401
    # A wrong bearer token never falls back to a valid cookie.
    _login(client, "viewer")
    response = client.get("/api/models", headers={"Authorization": "Bearer fft_wrong"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/models", headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 200


def test_admin_manages_users_and_tokens(client: TestClient, ids: Identities, registry: InMemoryRegistry) -> None:
    admin = ids.bearer("admin")
    created = client.post(
        "/api/users", json={"username": "eve", "role": "operator", "password": "pw-pw-pw-pw"}, headers=admin
    )
    assert created.json() == {**created.json(), "username": "eve", "role": "operator", "can_log_in": True}
    assert client.post("/api/users", json={"username": "eve", "role": "viewer"}, headers=admin).status_code == 400
    token = client.post("/api/tokens", json={"username": "eve", "name": "laptop"}, headers=admin).json()
    assert token["token"].startswith("fft_")
    eve = {"Authorization": f"Bearer {token['token']}"}
    assert client.get("/api/auth/me", headers=eve).json()["role"] == "operator"
    listed = client.get("/api/tokens", headers=admin).json()
    assert all("token" not in t for t in listed)  # never shown again
    assert client.post(f"/api/tokens/{token['token_id']}/revoke", headers=admin).json()["revoked_at"] is not None
    assert client.get("/api/auth/me", headers=eve).status_code == 401
    assert client.post("/api/users/eve/disable", headers=admin).json()["disabled"] is True
    assert client.post("/api/users/nobody/disable", headers=admin).status_code == 404
    assert client.post("/api/tokens/tok-nope/revoke", headers=admin).status_code == 404
    audit = [(e.actor, e.action) for e in reversed(registry.list_audit())]
    assert ("admin", "user.created") in audit
    assert ("admin", "token.revoked") in audit
    assert ("admin", "user.disabled") in audit


def test_metrics_can_require_a_viewer(ids: Identities, registry: InMemoryRegistry, tmp_path: Path) -> None:
    open_client = _client(ids, registry, tmp_path)
    assert open_client.get("/metrics").status_code == 200
    closed = _client(ids, registry, tmp_path, metrics_require_auth=True)
    assert closed.get("/metrics").status_code == 401
    assert closed.get("/metrics", headers=ids.bearer("viewer")).status_code == 200
    assert closed.get("/healthz").status_code == 200


def test_a_new_login_ends_the_old_session(client: TestClient) -> None:
    _login(client, "viewer")
    old = client.cookies.get(SESSION_COOKIE)
    _login(client, "admin")
    assert client.get("/api/auth/me").json()["username"] == "admin"
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, str(old))
    assert client.get("/api/auth/me").status_code == 401
