"""The agent's Prometheus endpoint, scraped over HTTP while a real agent ingests and scores."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import AgentSettings
from shared.features import FeatureSpec
from tests.edge_agent.agent_harness import AgentThread, Observer, wait_for
from tests.edge_agent.agent_testlib import payload, record
from tests.edge_agent.conftest import Bundle, Keys
from tests.edge_agent.test_agent_integration import DEVICE, install_v1

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_endpoint(
    mosquitto: Any,
    tmp_path: Path,
    operator_keys: Keys,
    spec: FeatureSpec,
    make_bundle: Callable[..., Bundle],
) -> None:
    fleet = f"m{tmp_path.name[-8:].replace('_', '')}"
    settings = AgentSettings(
        device_id=DEVICE,
        fleet=fleet,
        broker_url=mosquitto.url,
        data_dir=tmp_path / "agent",
        trusted_keys=[operator_keys.public_path],
        heartbeat_s=0.5,
        metrics_port=0,  # a free loopback port
    )
    observer = Observer(mosquitto.url, fleet, DEVICE)
    try:
        with AgentThread(settings, feature_spec=spec) as run:
            assert run.agent is not None
            port = run.agent.metrics.port
            assert port is not None
            assert _scrape(port)["fedforge_agent_serving_version"] == 0
            install_v1(observer, make_bundle)
            observer.ingest(payload([record(f"r{i}") for i in range(20)] + [{"broken": True}]))
            figures = wait_for(
                lambda: (m := _scrape(port)).get("fedforge_agent_records_scored_total") == 20 and m,
                what="scored records in /metrics",
            )
            assert figures["fedforge_agent_records_ingested_total"] == 20
            assert figures["fedforge_agent_records_quarantined_total"] == 1
            assert figures["fedforge_agent_serving_version"] == 1
            assert figures["fedforge_agent_scoring_seconds_per_record_count"] >= 1
            assert "fedforge_agent_outbox_depth" in figures
            # The drift gauge appears with the first status after scoring (heartbeat 0.5 s).
            scraped = wait_for(
                lambda: "fedforge_agent_drift_score" in (m := _scrape(port)) and m, what="drift in /metrics"
            )
            assert scraped["fedforge_agent_drift_score"] >= 0
        with pytest.raises(urllib.error.URLError):
            _scrape(port)  # the endpoint stops with the agent
    finally:
        observer.close()


def test_metrics_are_off_by_default(tmp_path: Path, operator_keys: Keys) -> None:
    settings = AgentSettings(device_id="d", data_dir=tmp_path, trusted_keys=[operator_keys.public_path])
    assert settings.metrics_port is None
    assert settings.metrics_host == "127.0.0.1"
