"""Odd request values over the production stores (SqlRegistry + SqlAuthStore, SQLite and
PostgreSQL): a clear 4xx, never a 500; and the live event stream stays strict JSON."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.config import ServerSettings
from server.registry.auth_sql import SqlAuthStore
from server.registry.migrate import migrate
from server.registry.sql import SqlRegistry
from server.registry.telemetry_sql import SqlTelemetryStore
from server.telemetry.points import TelemetryPoint
from shared.schemas import DeviceStatus
from tests.server.auth_support import Identities, identities

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestClient, Identities, SqlRegistry]]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "clean_postgres")
    migrate(url)
    registry = SqlRegistry(url)
    now = time.time()
    registry.upsert_device_status(
        DeviceStatus(device_id="edge-1", fleet="default", kind="heartbeat", ts=now), received_at=now
    )
    ids = identities(registry, SqlAuthStore(registry.engine))
    telemetry = SqlTelemetryStore(registry.engine)
    app = create_app(ServerSettings(data_dir=tmp_path), registry, ids.auth, telemetry=telemetry)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers.update(ids.bearer("admin"))
        yield client, ids, registry
    registry.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/devices/a%00b"),
        ("GET", "/api/devices/a%00b/telemetry"),
        ("GET", "/api/devices/a%00b/quarantine"),
        ("GET", "/api/runs/a%00b"),
        ("POST", "/api/devices/a%00b/revoke"),
        ("POST", "/api/users/a%00b/disable"),
        ("POST", "/api/tokens/a%00b/revoke"),
        ("GET", "/devices/a%00b"),
    ],
)
def test_a_nul_in_a_path_names_nothing(api: tuple[TestClient, Identities, SqlRegistry], method: str, path: str) -> None:
    client, _, _ = api
    r = client.request(method, path)
    assert r.status_code == 404, r.text
    assert r.json() == {"error": "not_found", "detail": "no resource has a NUL character in its name"}


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/rounds?run_id=a%00b", "run_id"),
        ("/api/devices/edge-1/telemetry?since=1&x%00=1", "x\ufffd"),
    ],
)
def test_a_nul_in_a_query_value_is_a_422(
    api: tuple[TestClient, Identities, SqlRegistry], path: str, param: str
) -> None:
    client, _, _ = api
    r = client.get(path)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", param]
    assert "NUL" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("before", [2**31, 2**63, 10**20])
def test_audit_paging_past_the_id_column_is_a_422(api: tuple[TestClient, Identities, SqlRegistry], before: int) -> None:
    client, _, _ = api
    r = client.get(f"/api/audit?before={before}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "before"]
    assert client.get(f"/api/audit?before={2**31 - 1}").status_code == 200


@pytest.mark.parametrize("query", ["since=nan", "since=inf", "window_s=inf"])
def test_a_non_finite_telemetry_window_is_a_422(api: tuple[TestClient, Identities, SqlRegistry], query: str) -> None:
    client, _, _ = api
    r = client.get(f"/api/devices/edge-1/telemetry?{query}")
    assert r.status_code == 422, r.text


def test_a_login_with_a_nul_fails_like_any_other_and_is_audited(
    api: tuple[TestClient, Identities, SqlRegistry],
) -> None:
    client, _, registry = api
    r = client.post("/api/auth/login", json={"username": "adm\x00in", "password": "x"}, headers={"Authorization": ""})
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthenticated"
    [entry] = registry.list_audit(1)
    assert (entry.actor, entry.action, entry.detail["username"]) == ("anonymous", "auth.login_failed", "adm\x00in")


def test_token_requests_with_a_nul_are_refused(api: tuple[TestClient, Identities, SqlRegistry]) -> None:
    client, _, _ = api
    r = client.post("/api/tokens", json={"username": "a\x00b"})
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = client.post("/api/tokens", json={"username": "viewer", "name": "ci\x00bot"})
    assert (r.status_code, r.json()["error"]) == (400, "bad_request")
    assert "NUL" in r.json()["detail"]


def test_the_event_stream_is_strict_json_even_over_non_finite_stored_values(tmp_path: Path, sqlite_url: str) -> None:
    """Rows written before statuses were checked may hold infinities: the stream must still parse
    in a browser (JSON.parse refuses NaN / Infinity), with null in their place."""
    migrate(sqlite_url)
    registry = SqlRegistry(sqlite_url)
    telemetry = SqlTelemetryStore(registry.engine)
    now = time.time()
    registry.upsert_device_status(
        DeviceStatus(device_id="edge-2", fleet="default", kind="heartbeat", ts=now), received_at=now
    )
    with registry.engine.begin() as conn:
        conn.execute(sa.text("UPDATE devices SET scoring_latency_ms_p50 = :v"), {"v": math.inf})
    for i, at in enumerate((now - 10, now)):
        telemetry.add_point(
            TelemetryPoint(
                "edge-2", at, 10 * i, 0, 10 * i, drift_score=math.inf, drift_feature="V1", drift_shift=-math.inf
            )
        )
    ids = identities(registry)
    app = create_app(ServerSettings(data_dir=tmp_path), registry, ids.auth, telemetry=telemetry)
    client = TestClient(app, raise_server_exceptions=False)
    try:
        r = client.get("/api/events?limit=1", headers=ids.bearer("viewer"))
        assert r.status_code == 200
        data = next(line for line in r.text.splitlines() if line.startswith("data: "))[len("data: ") :]

        def refuse(token: str) -> None:
            raise AssertionError(f"non-standard JSON token {token}")

        summary = json.loads(data, parse_constant=refuse)
        [row] = [d for d in summary["rows"] if d["device_id"] == "edge-2"]
        assert (row["drift_score"], row["drift_shift"], row["scoring_latency_ms"]) == (None, None, None)
    finally:
        registry.close()
