"""The REST API against an InMemoryRegistry, through FastAPI's TestClient."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.config import ServerSettings
from server.registry import InMemoryRegistry, ModelVersionRecord, RoundRecord
from shared.schemas import Counters, DeviceStatus, Rejection
from tests.server.auth_support import identities


@pytest.fixture
def registry() -> InMemoryRegistry:
    reg = InMemoryRegistry()
    for version, stage in ((1, "published"), (2, "candidate")):
        reg.add_model_version(
            ModelVersionRecord(
                task="fraud",
                version=version,
                parent_version=version - 1 or None,
                training_run_id="bootstrap" if version == 1 else "run-1",
                created=1000.0 + version,
                metrics={"auprc": 0.7},
                sha256=f"{version}" * 64,
                size=5,
                signer="0123456789abcdef",
                signature="c2ln",
                manifest={"task": "fraud", "version": version},
                stage=stage,  # type: ignore[arg-type]
            ),
            f"onnx{version}".encode(),
        )
    now = time.time()
    reg.upsert_device_status(
        DeviceStatus(
            device_id="edge-1",
            fleet="default",
            kind="heartbeat",
            ts=now,
            model_version=1,
            signature_verified=True,
            counters=Counters(ingested=10),
            last_rejection=Rejection(version=2, reason="sha256 mismatch", at=now),
        ),
        received_at=now,
    )
    reg.upsert_device_status(DeviceStatus(device_id="edge-2", fleet="default", kind="offline", ts=now), received_at=now)
    reg.upsert_device_status(DeviceStatus(device_id="far", fleet="other", kind="birth", ts=now), received_at=now)
    reg.start_run("run-1", 2, started=now)
    reg.add_round(RoundRecord("run-1", 1, participants=2, failures=0, metrics={"loss": 0.4}, duration_s=2.0))
    return reg


@pytest.fixture
def client(registry: InMemoryRegistry, tmp_path: object) -> TestClient:
    """A viewer's client: every read route needs at least that (authorization: test_api_authz.py)."""
    ids = identities(registry)
    client = TestClient(create_app(ServerSettings(data_dir=tmp_path), registry, ids.auth))
    client.headers.update(ids.bearer("viewer"))
    return client


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"


def test_models_list_manifest_and_artifact(client: TestClient) -> None:
    models = client.get("/api/models").json()
    assert [(m["version"], m["stage"], m["parent_version"]) for m in models] == [
        (2, "candidate", 1),
        (1, "published", None),
    ]
    assert models[1]["signer"] == "0123456789abcdef"
    assert client.get("/api/models/1/manifest").json() == {"task": "fraud", "version": 1}
    artifact = client.get("/api/models/2/artifact")
    assert artifact.status_code == 200
    assert artifact.content == b"onnx2"
    assert artifact.headers["x-fedforge-sha256"] == "2" * 64


@pytest.mark.parametrize("path", ["/api/models/9", "/api/models/9/manifest", "/api/models/9/artifact"])
def test_unknown_model_is_a_json_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "9" in response.json()["detail"]


def test_devices_of_this_fleet_with_online_flag(client: TestClient) -> None:
    devices = {d["device_id"]: d for d in client.get("/api/devices").json()}
    assert set(devices) == {"edge-1", "edge-2"}
    assert devices["edge-1"]["online"] is True
    assert devices["edge-1"]["serving_version"] == 1
    assert devices["edge-1"]["counters"]["ingested"] == 10
    assert devices["edge-1"]["last_rejection"]["reason"] == "sha256 mismatch"
    assert devices["edge-2"]["online"] is False
    assert client.get("/api/devices/edge-1").json()["signature_verified"] is True
    assert client.get("/api/devices/far").status_code == 404


def test_runs_and_rounds(client: TestClient) -> None:
    assert [r["run_id"] for r in client.get("/api/runs").json()] == ["run-1"]
    run = client.get("/api/runs/run-1").json()
    assert run["status"] == "running"
    assert run["round_metrics"][0]["metrics"] == {"loss": 0.4}
    assert client.get("/api/rounds").json()[0]["participants"] == 2
    assert client.get("/api/rounds", params={"run_id": "nope"}).status_code == 404
    assert client.get("/api/runs/nope").json()["error"] == "not_found"


def test_unknown_route_is_json(client: TestClient) -> None:
    response = client.get("/api/nothing")
    assert response.status_code == 404
    assert response.json()["error"] == "http_error"


def test_prometheus_metrics(client: TestClient) -> None:
    client.get("/api/models")
    text = client.get("/metrics").text
    assert "fedforge_devices_online 1.0" in text
    assert 'fedforge_models_published_total{task="fraud"} 1.0' in text
    assert "fedforge_rounds_total 1.0" in text
    # Rollout progress: edge-1 serves the release (v1), edge-2 serves nothing -> half the fleet.
    assert 'fedforge_release_version{task="fraud"} 1.0' in text
    assert 'fedforge_rollout_progress{task="fraud"} 0.5' in text
    assert 'fedforge_devices_serving{version="1"} 1.0' in text
    assert 'fedforge_http_request_duration_seconds_count{method="GET",route="/api/models",status="200"} 1.0' in text
