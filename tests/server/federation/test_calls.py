"""The federation call on a real Mosquitto: retained, signed, ended when a submission fails."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from server.config import ServerSettings
from server.federation.calls import announce, submit_called_run
from server.federation.flower import FlowerRunError
from shared import topics
from shared.commands import verify_federation_call
from shared.mqtt import BrokerAddress, MqttClient
from shared.net import free_port
from shared.schemas import FederationCall, decode
from shared.signing import TrustStore, load_public_key, write_keypair

pytestmark = pytest.mark.integration
T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll for an outcome; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Retained:
    """A late subscriber: what the broker retains on the fleet's call topic."""

    def __init__(self, broker_url: str, fleet: str) -> None:
        self.calls: list[FederationCall] = []
        self._lock = threading.Lock()
        self.client = MqttClient(BrokerAddress.parse(broker_url), f"calls-{uuid.uuid4().hex[:8]}", persistent=False)
        self.client.subscribe(topics.federation_call(fleet), self._on)

    def _on(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            self.calls.append(decode(FederationCall, payload))

    def latest(self) -> FederationCall | None:
        with self._lock:
            return self.calls[-1] if self.calls else None


def settings(tmp_path: Path, broker_url: str, **extra: Any) -> ServerSettings:
    s = ServerSettings(fleet=f"c{uuid.uuid4().hex[:8]}", data_dir=tmp_path / "server", broker_url=broker_url, **extra)
    write_keypair(s.signing_key, s.signing_public_key)
    return s


def test_a_call_is_retained_signed_and_expires_after_the_longest_run(mosquitto: Any, tmp_path: Path) -> None:
    s = settings(tmp_path, mosquitto.url, round_timeout_s=100.0, join_wait_s=20.0)
    assert announce(s, "run-1", 3, "open")
    watcher = Retained(mosquitto.url, s.fleet)  # subscribes after the publish: sees it only if retained
    watcher.client.start()
    try:
        call = wait_for(watcher.latest, what="the retained call")
        assert (call.run_id, call.fleet, call.state) == ("run-1", s.fleet, "open")
        assert call.expires_at - call.issued_at == pytest.approx(20.0 + 3 * 100.0 + 600.0)
        verify_federation_call(call, TrustStore([load_public_key(s.signing_public_key)]), fleet=s.fleet)
        assert announce(s, "run-1", 3, "ended", client=watcher.client)  # on a client of the caller's
        wait_for(lambda: (c := watcher.latest()) is not None and c.state == "ended", what="the ended call")
    finally:
        watcher.client.stop()


def test_a_call_that_cannot_be_published_does_not_raise(tmp_path: Path) -> None:
    s = settings(tmp_path, f"mqtt://127.0.0.1:{free_port()}")  # nobody listens there
    assert not announce(s, "run-1", 1, "open")
    missing_key = ServerSettings(data_dir=tmp_path / "nokey", broker_url=s.broker_url)
    assert not announce(missing_key, "run-1", 1, "open")


def test_a_run_that_cannot_be_submitted_ends_its_call(mosquitto: Any, tmp_path: Path) -> None:
    s = settings(tmp_path, mosquitto.url, superlink_port=free_port())  # no SuperLink there
    with pytest.raises(FlowerRunError):
        submit_called_run(s, tmp_path / "server.toml", "run-2", 1, 1)
    watcher = Retained(mosquitto.url, s.fleet)
    watcher.client.start()
    try:
        call = wait_for(watcher.latest, what="the retained call")
        assert (call.run_id, call.state) == ("run-2", "ended")
    finally:
        watcher.client.stop()
