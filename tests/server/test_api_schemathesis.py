"""schemathesis against the OpenAPI schema, as an admin: no input may produce a 5xx.

The app is the real one over an in-memory registry holding a small fleet, with a working
release channel, signing key and run launcher, so actions can succeed as well as fail.
Examples per operation are few (the whole run stays well under a minute on two cores).
"""

from __future__ import annotations

import time
from pathlib import Path
from tempfile import mkdtemp

import schemathesis
from hypothesis import HealthCheck, settings

from server.actions import FleetActions, InMemoryReleaseChannel
from server.api.app import create_app
from server.config import ServerSettings
from server.registry import InMemoryRegistry, RoundRecord
from server.release.release import manifest_record
from shared.bundle import build_manifest
from shared.features import FeatureSpec
from shared.schemas import DeviceStatus
from shared.signing import generate_private_key
from tests.server.auth_support import identities

KEY = generate_private_key()


def _app() -> tuple[object, dict[str, str]]:
    import numpy as np

    registry = InMemoryRegistry()
    spec = FeatureSpec.from_names("fraud", ("a",), {"a": (-1.0, 1.0)}).fit(np.zeros((3, 1)))
    for version, stage in ((1, "published"), (2, "published"), (3, "candidate")):
        data = f"model-{version}".encode() * 200
        manifest = build_manifest(
            model_bytes=data,
            task="fraud",
            version=version,
            feature_spec=spec,
            input_name="x",
            output_name="y",
            signing_key=KEY,
        )
        registry.add_model_version(manifest_record(manifest, stage), data)
    now = time.time()
    for device in ("edge-1", "edge-2"):
        status = DeviceStatus(device_id=device, fleet="default", kind="heartbeat", ts=now, model_version=2)
        registry.upsert_device_status(status, received_at=now)
    registry.start_run("run-1", 2, started=now - 5000)
    registry.add_round(RoundRecord("run-1", 1, participants=2, failures=0, metrics={"loss": 0.3}, duration_s=1.0))

    def launch(run_id: str, rounds: int, strategy: str, min_agents: int) -> str:
        registry.start_run(run_id, rounds, started=time.time() - 10**6)  # as the ServerApp would, long done
        return "1"

    config = ServerSettings(data_dir=Path(mkdtemp(prefix="fedforge-st-")))
    actions = FleetActions(
        config, registry, channel=InMemoryReleaseChannel(), signing_key=lambda: KEY, run_starter=launch
    )
    ids = identities(registry)
    return create_app(config, registry, ids.auth, actions), ids.bearer("admin")


APP, ADMIN = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers=ADMIN)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
