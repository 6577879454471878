"""The dashboard's server side: read endpoints, live events, pages per role, static files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.config import ServerSettings
from server.registry import InMemoryRegistry, ModelVersionRecord
from server.registry.telemetry import InMemoryTelemetryStore
from server.telemetry.ingest import record_status
from shared.schemas import Counters, DeviceStatus, Drift, QuarantineSample
from tests.server.auth_support import PASSWORD, ROLES, Identities, identities

PAGES = ("/fleet", "/devices/edge-1", "/models", "/runs", "/rollouts", "/audit")


def _model(version: int, stage: str, auprc: float) -> ModelVersionRecord:
    return ModelVersionRecord(
        task="fraud",
        version=version,
        parent_version=version - 1 or None,
        training_run_id=f"run-{version}",
        created=1000.0 + version,
        metrics={"auprc": auprc, "roc_auc": 0.9},
        sha256=f"{version}" * 64,
        size=10 * version,
        signer="0123456789abcdef",
        signature="c2ln",
        manifest={"feature_spec": {"fields": [{}, {}]}},
        stage=stage,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestClient, Identities]:
    registry = InMemoryRegistry()
    for version, stage, auprc in ((1, "published", 0.70), (2, "published", 0.75), (3, "candidate", 0.74)):
        registry.add_model_version(_model(version, stage, auprc), b"onnx")
    telemetry = InMemoryTelemetryStore()
    now = time.time()
    # edge-1 reports every 5 s: 40 records/s, 1 in 40 quarantined, serving v2.
    for i in range(6):
        at = now - 30 + 5 * i
        status = DeviceStatus(
            device_id="edge-1",
            fleet="default",
            kind="heartbeat",
            ts=at,
            model_version=2,
            counters=Counters(ingested=195 * i, quarantined=5 * i, scored=195 * i),
            scoring_latency_ms_p50=0.005,
            drift=Drift(score=0.12, window=1000, worst_feature="Amount", worst_shift=0.5),
            recent_quarantine=(QuarantineSample(at=at, record_id=f"tx-{i}", reason="V1: not a number", excerpt="{"),),
        )
        registry.upsert_device_status(status, received_at=at)
        record_status(telemetry, status, at, retained=False)
    for device, version in (("edge-2", 2), ("edge-3", 1)):
        status = DeviceStatus(device_id=device, fleet="default", kind="heartbeat", ts=now, model_version=version)
        registry.upsert_device_status(status, received_at=now)
        record_status(telemetry, status, now, retained=False)
    gone = DeviceStatus(device_id="edge-4", fleet="default", kind="offline", ts=now, model_version=1)
    registry.upsert_device_status(gone, received_at=now)
    rogue = DeviceStatus(device_id="edge-5", fleet="default", kind="heartbeat", ts=now, model_version=3)
    registry.upsert_device_status(rogue, received_at=now)
    registry.set_device_revoked("edge-5", True)
    ids = identities(registry)
    app = create_app(ServerSettings(data_dir=tmp_path_factory.mktemp("dash")), registry, ids.auth, telemetry=telemetry)
    app.state.event_interval_s = 0.01
    return TestClient(app), ids


def _browser(world: tuple[TestClient, Identities], role: str) -> TestClient:
    """A client holding a session cookie, as a browser would after the login page."""
    client, _ = world
    fresh = TestClient(client.app)
    response = fresh.post("/api/auth/login", json={"username": role, "password": PASSWORD})
    assert response.status_code == 200
    return fresh


def test_fleet_summary_has_rates_drift_and_versions(world: tuple[TestClient, Identities]) -> None:
    client, ids = world
    summary = client.get("/api/fleet/summary", headers=ids.bearer("viewer")).json()
    assert (summary["devices"], summary["online"], summary["offline"]) == (5, 3, 2)
    assert summary["latest_published"] == 2
    assert summary["on_latest"] == 2
    assert summary["versions"] == [
        {"version": 2, "devices": 2, "share": pytest.approx(2 / 3, abs=1e-5)},
        {"version": 1, "devices": 1, "share": pytest.approx(1 / 3, abs=1e-5)},
    ]
    rows = {r["device_id"]: r for r in summary["rows"]}
    assert rows["edge-1"]["records_per_s"] == pytest.approx(40.0)
    assert rows["edge-1"]["quarantine_rate"] == pytest.approx(5 / 200)
    assert rows["edge-1"]["drift_score"] == 0.12
    assert (rows["edge-1"]["drift_feature"], rows["edge-1"]["drift_shift"]) == ("Amount", 0.5)
    assert rows["edge-1"]["scoring_latency_ms"] == 0.005
    assert rows["edge-2"]["records_per_s"] is None  # one point: no rate yet
    assert rows["edge-4"]["online"] is False
    assert rows["edge-4"]["records_per_s"] is None
    # A revoked device is out of the fleet, whatever it still reports.
    assert (rows["edge-5"]["revoked"], rows["edge-5"]["online"]) == (True, False)


def test_device_telemetry_and_quarantine(world: tuple[TestClient, Identities]) -> None:
    client, ids = world
    h = ids.bearer("viewer")
    points = client.get("/api/devices/edge-1/telemetry", headers=h).json()["points"]
    assert len(points) == 5
    assert all(p["records_per_s"] == pytest.approx(40.0) for p in points)
    assert all(p["serving_version"] == 2 for p in points)
    recent = client.get("/api/devices/edge-1/quarantine", headers=h).json()
    assert [q["record_id"] for q in recent] == [f"tx-{i}" for i in range(5, -1, -1)]
    assert recent[0]["reason"] == "V1: not a number"
    assert client.get("/api/devices/edge-1/quarantine?limit=2", headers=h).json() == recent[:2]
    for path in ("/api/devices/nobody/telemetry", "/api/devices/nobody/quarantine"):
        assert client.get(path, headers=h).status_code == 404


def test_compare_two_versions(world: tuple[TestClient, Identities]) -> None:
    client, ids = world
    h = ids.bearer("viewer")
    c = client.get("/api/models/compare?a=1&b=3", headers=h).json()
    metrics = {m["name"]: m for m in c["metrics"]}
    assert metrics["auprc"]["delta"] == pytest.approx(0.04)
    assert metrics["roc_auc"]["delta"] == 0.0
    assert c["lineage"] == {"a": [1], "b": [3, 2, 1], "common_ancestor": 1}
    fields = {f["name"]: (f["a"], f["b"]) for f in c["fields"]}
    assert fields["stage"] == ("published", "candidate")
    assert client.get("/api/models/compare?a=1&b=42", headers=h).status_code == 404
    assert client.get("/api/models/3/lineage", headers=h).json() == [3, 2, 1]


def test_event_stream_sends_fleet_summaries(world: tuple[TestClient, Identities]) -> None:
    client, ids = world
    response = client.get("/api/events?limit=2", headers=ids.bearer("viewer"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block.startswith("event: fleet")]
    assert len(events) == 2
    payload = json.loads(events[0].split("data: ", 1)[1])
    assert payload["online"] == 3
    assert client.get("/api/events?limit=1").status_code == 401


@pytest.mark.parametrize("role", ROLES)
def test_every_page_renders_for_every_role(world: tuple[TestClient, Identities], role: str) -> None:
    browser = _browser(world, role)
    for path in PAGES:
        response = browser.get(path)
        assert response.status_code == 200, path
        assert f'data-role="{role}"' in response.text
        assert 'name="csrf-token" content="' in response.text
        assert "https://" not in response.text  # nothing from a CDN: it works offline


def test_actions_are_hidden_from_viewers_and_shown_to_operators(world: tuple[TestClient, Identities]) -> None:
    viewer, operator = _browser(world, "viewer"), _browser(world, "operator")
    for path in PAGES:
        assert "data-action" not in viewer.get(path).text, path
    assert 'data-action="start-run"' in operator.get("/runs").text
    assert 'data-action="rollback"' in operator.get("/rollouts").text
    device_page = operator.get("/devices/edge-1").text
    assert all(f'data-action="{a}"' in device_page for a in ("revoke", "pin", "unpin", "configure", "configure-local"))
    # The audit log's API is for operators: a viewer's page says so instead of failing.
    assert 'id="audit-restricted"' in viewer.get("/audit").text
    assert 'id="audit"' in operator.get("/audit").text
    # Promote / roll back on the models page are drawn by models.js, for operators only.
    assert "Actions</th>" in operator.get("/models").text
    assert "Actions</th>" not in viewer.get("/models").text


def test_pages_redirect_to_login_without_a_session(world: tuple[TestClient, Identities]) -> None:
    client, ids = world
    anonymous = TestClient(client.app, follow_redirects=False)
    response = anonymous.get("/devices/edge-1?x=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fdevices%2Fedge-1%3Fx%3D1"
    # A bearer token is for scripts: pages want the browser's session.
    assert anonymous.get("/fleet", headers=ids.bearer("admin")).status_code == 303
    anonymous.cookies.set("fedforge_session", "forged")
    assert anonymous.get("/fleet").status_code == 303
    assert anonymous.get("/login").status_code == 200
    assert anonymous.get("/").headers["location"] == "/fleet"


def test_device_ids_are_escaped_in_pages(world: tuple[TestClient, Identities]) -> None:
    page = _browser(world, "viewer").get("/devices/%3Cscript%3Ealert(1)").text
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)" in page


def test_static_files_are_served_from_a_fixed_list(world: tuple[TestClient, Identities]) -> None:
    client, _ = world
    js = client.get("/static/app.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/static/..%2F__init__.py").status_code == 404
    assert client.get("/static/%2E%2E").status_code == 404


def test_every_static_file_named_by_a_template_exists() -> None:
    """A renamed module would break a page silently; the templates' references must resolve."""
    import re

    from server.web import STATIC_DIR, TEMPLATES_DIR

    referenced = set()
    for template in Path(TEMPLATES_DIR).glob("*.html"):
        referenced |= set(re.findall(r'/static/([\w.-]+)"', template.read_text()))
    for module in Path(STATIC_DIR).glob("*.js"):
        referenced |= set(re.findall(r'from "\./([\w.-]+)"', module.read_text()))
    assert referenced
    assert {name for name in referenced if not (Path(STATIC_DIR) / name).is_file()} == set()


def test_open_pages_share_one_snapshot_per_interval() -> None:
    from server.api.dashboard import SnapshotCache

    builds: list[int] = []

    def build() -> dict[str, object]:
        builds.append(1)
        return {"n": len(builds)}

    shared = SnapshotCache(build, ttl_s=3600.0)
    assert shared.get() is shared.get()
    assert len(builds) == 1
    fresh = SnapshotCache(build, ttl_s=0.0)
    assert fresh.get() != fresh.get()
