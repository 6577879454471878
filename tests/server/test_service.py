"""The whole server process: bootstrap release, API, companions, graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from shared import topics
from shared.bundle import parse_manifest, verify_manifest
from shared.mqtt import BrokerAddress, MqttClient
from shared.net import free_port
from shared.schemas import DeviceStatus
from shared.signing import TrustStore

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pathlib import Path
    from server.app import serve
    from server.config import load_server_settings

    class Marker:
        def __init__(self, path): self.path = Path(path)
        def start(self): self.path.write_text("started")
        def stop(self): self.path.write_text("stopped")

    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(load_server_settings(Path(sys.argv[1])), [Marker(sys.argv[2])]))
    """
)


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    """Until the API answers; fails early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no answer from {url}")


def _get(url: str, token: str | None = None) -> Any:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
        return json.loads(response.read())


def _viewer_token(conf: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """As an operator would: `fedforge users create` + `fedforge tokens create` on the server's database."""
    from server.cli import run_command

    assert run_command("users", ["create", "watcher", "--role", "viewer", "--no-password", "--config", str(conf)]) == 0
    assert run_command("tokens", ["create", "--user", "watcher", "--config", str(conf)]) == 0
    return str(json.loads(capsys.readouterr().out.splitlines()[-1])["token"])


class _EventStream:
    """A browser's EventSource, reduced: read the server-sent events until the server hangs up."""

    def __init__(self, url: str, token: str) -> None:
        self.lines: list[bytes] = []
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        self.thread = threading.Thread(target=self._read, args=(request,), daemon=True)
        self.thread.start()

    def _read(self, request: urllib.request.Request) -> None:
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                for line in response:
                    self.lines.append(line)
        except OSError:
            pass  # the server went away: what a browser would see too

    def wait_event(self, name: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f"event: {name}".encode() in b"".join(self.lines):
                return True
            time.sleep(0.05)
        return False


def test_server_bootstraps_serves_and_stops_on_sigterm(
    tmp_path: Path,
    mosquitto: Any,
    bootstrap_df: pd.DataFrame,
    holdout_df: pd.DataFrame,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = f"svc{uuid.uuid4().hex[:6]}"
    port = free_port()
    bootstrap_df.to_parquet(tmp_path / "boot.parquet")
    holdout_df.to_parquet(tmp_path / "holdout.parquet")
    conf = tmp_path / "server.toml"
    conf.write_text(
        f'data_dir = "{tmp_path / "data"}"\nfleet = "{fleet}"\nbroker_url = "{mosquitto.url}"\n'
        f'http_port = {port}\nbootstrap_data = "{tmp_path / "boot.parquet"}"\n'
        f'holdout_data = "{tmp_path / "holdout.parquet"}"\nbootstrap_epochs = 2\ndevice = "cpu"\n'
    )
    token = _viewer_token(conf, capsys)
    marker = tmp_path / "companion"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(conf), str(marker)], env=env, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        assert marker.read_text() == "started"
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            _get(f"http://127.0.0.1:{port}/api/models")
        assert anonymous.value.code == 401
        models = _get(f"http://127.0.0.1:{port}/api/models", token)
        assert [(m["version"], m["stage"], m["training_run_id"]) for m in models] == [(1, "published", "bootstrap")]

        agent = MqttClient(BrokerAddress.parse(mosquitto.url), f"agent-{uuid.uuid4().hex[:6]}", persistent=False)
        received: list[bytes] = []
        agent.subscribe(topics.manifest(fleet, "fraud"), lambda t, p, r: received.append(p))
        agent.start()
        status = DeviceStatus(device_id="edge-1", fleet=fleet, kind="heartbeat", ts=time.time(), model_version=1)
        agent.publish_and_wait(topics.status(fleet, "edge-1"), status.to_bytes(), retain=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _get(f"http://127.0.0.1:{port}/api/devices", token):
            time.sleep(0.05)
        devices = _get(f"http://127.0.0.1:{port}/api/devices", token)
        assert [(d["device_id"], d["online"], d["serving_version"]) for d in devices] == [("edge-1", True, 1)]
        # The dashboard's history: a second status is a second point, and the interval has a rate.
        later = DeviceStatus(
            device_id="edge-1",
            fleet=fleet,
            kind="heartbeat",
            ts=time.time(),
            model_version=1,
            counters={"ingested": 50},
        )
        agent.publish_and_wait(topics.status(fleet, "edge-1"), later.to_bytes(), retain=True)
        telemetry_url = f"http://127.0.0.1:{port}/api/devices/edge-1/telemetry"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _get(telemetry_url, token)["points"]:
            time.sleep(0.05)
        [point] = _get(telemetry_url, token)["points"]
        assert point["records_per_s"] > 0
        agent.publish_and_wait(topics.status(fleet, "edge-1"), b"", retain=True)
        agent.stop()
        assert received
        manifest = parse_manifest(received[0])
        trust = TrustStore.from_files([tmp_path / "data" / "keys" / "operator.pub.pem"])
        verify_manifest(manifest, trust)

        # A dashboard left open holds an event stream; it must not hold up the shutdown.
        stream = _EventStream(f"http://127.0.0.1:{port}/api/events", token)
        assert stream.wait_event("fleet")

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        stream.thread.join(30)
        assert not stream.thread.is_alive()
        assert marker.read_text() == "stopped"
        assert (tmp_path / "data" / "registry.db").is_file()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
