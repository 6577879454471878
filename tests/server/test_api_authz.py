"""The authorization matrix of EVERY route: anonymous 401, too weak a role 403, enough passes.

The table below must name each route of the app (method, path template): a new route that
is not added here fails ``test_every_route_is_in_the_matrix``, so none escapes review.
Pages (GET outside /api) may answer an anonymous browser with a redirect to a login page
instead of a 401.
Requests use ids that do not exist, so an allowed call ends in 404/422 without side effects.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from server.api.app import create_app
from server.config import ServerSettings
from server.registry import InMemoryRegistry
from tests.server.auth_support import ROLES, Identities, identities

OPEN = None
# (method, path) -> the least role, or OPEN
MATRIX: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/metrics"): OPEN,  # metrics_require_auth=true makes it viewer (test_api_auth.py)
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/redoc"): OPEN,
    ("POST", "/api/auth/login"): OPEN,
    ("POST", "/api/auth/logout"): "viewer",
    ("GET", "/api/auth/me"): "viewer",
    ("GET", "/api/models"): "viewer",
    ("GET", "/api/models/{version}"): "viewer",
    ("GET", "/api/models/{version}/manifest"): "viewer",
    ("GET", "/api/models/{version}/artifact"): "viewer",
    ("GET", "/api/devices"): "viewer",
    ("GET", "/api/devices/{device_id}"): "viewer",
    ("GET", "/api/runs"): "viewer",
    ("GET", "/api/runs/{run_id}"): "viewer",
    ("GET", "/api/rounds"): "viewer",
    ("GET", "/api/rollouts"): "viewer",
    ("GET", "/api/audit"): "operator",
    ("POST", "/api/runs"): "operator",
    ("POST", "/api/models/{version}/promote"): "operator",
    ("POST", "/api/fleet/rollback"): "operator",
    ("POST", "/api/devices/{device_id}/revoke"): "operator",
    ("POST", "/api/devices/{device_id}/pin"): "operator",
    ("POST", "/api/devices/{device_id}/unpin"): "operator",
    ("POST", "/api/devices/{device_id}/config"): "operator",
    # the dashboard's read model and live events (server/api/dashboard.py)
    ("GET", "/api/fleet/summary"): "viewer",
    ("GET", "/api/devices/{device_id}/telemetry"): "viewer",
    ("GET", "/api/devices/{device_id}/quarantine"): "viewer",
    ("GET", "/api/devices/{device_id}/config"): "viewer",
    ("GET", "/api/models/compare"): "viewer",
    ("GET", "/api/models/{version}/lineage"): "viewer",
    ("GET", "/api/events"): "viewer",
    # the dashboard (server/api/pages.py): the login form, the root redirect and static files are
    # open; pages need a viewer's session and send anyone else to the login form
    ("GET", "/login"): OPEN,
    ("GET", "/"): OPEN,
    ("GET", "/static/{asset}"): OPEN,
    ("GET", "/fleet"): "viewer",
    ("GET", "/devices/{device_id}"): "viewer",
    ("GET", "/models"): "viewer",
    ("GET", "/runs"): "viewer",
    ("GET", "/rollouts"): "viewer",
    ("GET", "/audit"): "viewer",
    ("GET", "/api/users"): "admin",
    ("POST", "/api/users"): "admin",
    ("POST", "/api/users/{username}/disable"): "admin",
    ("GET", "/api/tokens"): "admin",
    ("POST", "/api/tokens"): "admin",
    ("POST", "/api/tokens/{token_id}/revoke"): "admin",
}
# Path parameters: ids that exist nowhere, so an authorized call is a harmless 404.
SAMPLES = {"version": "999999", "device_id": "no-such-device", "run_id": "no-such-run", "username": "nobody"}
SAMPLES["token_id"] = "tok-nope"
SAMPLES["asset"] = "no-such-file.js"
# Query strings some routes need to answer at all: the event stream ends after one event.
QUERIES = {"/api/events": "?limit=1"}
# Bodies that fail validation (422) once authorized: a mutation must not really happen here.
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def _routes(app: object) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:  # type: ignore[attr-defined]
        # An included router or a mount would hide its routes from this test: register on the app.
        assert isinstance(route, APIRoute | Route), f"{route!r}: register routes on the app itself"
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, route.path))
    return found


@pytest.fixture(scope="module")
def ids() -> Identities:
    return identities(InMemoryRegistry())


@pytest.fixture(scope="module")
def client(ids: Identities, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    registry = InMemoryRegistry()
    ids.auth._audit = registry
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("authz"))
    return TestClient(create_app(settings, registry, ids.auth))


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], path) + QUERIES.get(path, "")


def _call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> int:
    kwargs: dict[str, object] = {"headers": headers}
    if method in MUTATING and path != "/api/auth/logout":
        kwargs["json"] = {"__invalid__": True}
    return client.request(method, _url(path), **kwargs).status_code  # type: ignore[arg-type]


def test_every_route_is_in_the_matrix(client: TestClient) -> None:
    routes = _routes(client.app)
    assert routes - MATRIX.keys() == set(), "new routes: add them to MATRIX with their least role"
    assert MATRIX.keys() - routes == set(), "MATRIX names routes the app no longer has"
    for (method, path), role in MATRIX.items():
        assert role is not OPEN or not path.startswith("/api/") or path == "/api/auth/login", (method, path)
        assert method not in MUTATING or role in ("operator", "admin", OPEN) or path == "/api/auth/logout", (
            "every mutating endpoint needs operator or admin",
            method,
            path,
        )


PROTECTED = sorted((m, p, r) for (m, p), r in MATRIX.items() if r is not OPEN)


@pytest.mark.parametrize(("method", "path", "least"), PROTECTED)
def test_anonymous_is_401(client: TestClient, method: str, path: str, least: str) -> None:
    for headers in ({}, {"Authorization": "Bearer fft_not-a-token"}):
        if path.startswith("/api/") or method != "GET":
            assert _call(client, method, path, headers) == 401
        else:  # a page may send the browser to its login form instead
            response = client.get(_url(path), headers=headers, follow_redirects=False)
            redirect = response.status_code in (302, 303, 307) and "login" in response.headers.get("location", "")
            assert response.status_code == 401 or redirect, (path, response.status_code)


@pytest.mark.parametrize(("method", "path", "least"), PROTECTED)
@pytest.mark.parametrize("role", ROLES)
def test_roles(client: TestClient, ids: Identities, method: str, path: str, least: str, role: str) -> None:
    status = _call(client, method, path, ids.bearer(role))
    if ROLES.index(role) < ROLES.index(least):
        assert status == 403, (role, method, path)
    else:
        assert status not in (401, 403), (role, method, path, status)
        assert status < 500, (role, method, path, status)


@pytest.mark.parametrize(("method", "path"), sorted(k for k, r in MATRIX.items() if r is OPEN))
def test_open_routes_answer_anonymously(client: TestClient, method: str, path: str) -> None:
    status = _call(client, method, path, {})
    assert status not in (401, 403), (method, path, status)
    assert status < 500, (method, path, status)


def test_matrix_names_its_samples(tmp_path: Path) -> None:
    """Every path parameter of every route has a sample id."""
    params = {name for _, path in MATRIX for name in re.findall(r"\{(\w+)\}", path)}
    assert params <= SAMPLES.keys()
