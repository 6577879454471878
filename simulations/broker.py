"""An MQTT 5 broker the demo starts itself, so ``fedforge demo`` needs no Mosquitto on PATH.

iotcore wraps rumqttd (a Rust broker) and runs it in a child process because rumqttd has no
shutdown API; stopping means terminating that child. Its keyword arguments only configure an
MQTT 3.1.1 listener with a 20 KB payload cap, and the project's client speaks MQTT 5 and
ships 256 KiB model chunks, so a full rumqttd TOML config is written to a private temp dir.
The listener binds 127.0.0.1 only: this broker has no authentication and is for local demos.

Measured with iotcore 0.4.0 (rumqttd 0.20) and shared.mqtt.MqttClient (spikes/broker):
retained manifest + chunks reach late subscribers, empty retained payloads delete, persistent
sessions keep subscriptions and queue QoS 1 messages (5,000 of 5,000 while offline), the will
is sent on an abrupt drop but not on a clean disconnect. A payload above ``max_payload_size``
makes paho reconnect endlessly (paho ignores the broker's limit), as with Mosquitto: chunk.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from iotcore import Broker

from shared.errors import FedforgeError
from shared.net import free_port

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
"""Room for 256 KiB model chunks and 1 MiB messages, with headroom."""
_START_ATTEMPTS = 3


class EmbeddedBrokerError(FedforgeError):
    """The embedded broker could not be started."""


def render_config(
    port: int,
    *,
    max_payload_size: int = DEFAULT_MAX_PAYLOAD,
    max_inflight_count: int = 100,
    max_connections: int = 1000,
) -> str:
    """A rumqttd 0.20 TOML config with one MQTT 5 listener on loopback.

    ``dynamic_filters`` lets clients subscribe to filters nobody declared up front. rumqttd
    keeps each filter's messages in an in-memory log of ``max_segment_count`` segments of
    ``max_segment_size`` bytes; a segment must hold at least one maximal payload.
    """
    if not 0 < port < 65536:
        raise EmbeddedBrokerError(f"port {port} out of range")
    if max_payload_size <= 0:
        raise EmbeddedBrokerError("max_payload_size must be positive")
    segment = max(100 * 1024 * 1024, 4 * max_payload_size)
    return f"""id = 0

[router]
id = 0
max_connections = {max_connections}
max_outgoing_packet_count = 200
max_segment_size = {segment}
max_segment_count = 10

[v5.1]
name = "fedforge-v5"
listen = "{LOOPBACK}:{port}"
next_connection_delay_ms = 1
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = {max_payload_size}
    max_inflight_count = {max_inflight_count}
    dynamic_filters = true
"""


class EmbeddedBroker:
    """rumqttd on a free loopback port; ``with EmbeddedBroker() as b: ... b.url``."""

    def __init__(self, *, port: int | None = None, max_payload_size: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._requested_port = port
        self._max_payload_size = max_payload_size
        self._port: int | None = None
        self._broker: Broker | None = None
        self._workdir: Path | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedBrokerError("embedded broker is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._broker is not None and self._broker.is_running

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Start and block until the port accepts connections.

        A free port can be taken between probing and binding, so a chosen-by-us port is
        retried with a fresh one; a port the caller asked for is not.
        """
        if self.is_running:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="fedforge-broker-"))
        attempts = 1 if self._requested_port is not None else _START_ATTEMPTS
        last: Exception | None = None
        for _ in range(attempts):
            port = self._requested_port if self._requested_port is not None else free_port()
            config = self._workdir / "rumqttd.toml"
            config.write_text(render_config(port, max_payload_size=self._max_payload_size))
            broker = Broker(config_path=str(config))
            try:
                broker.start(timeout=timeout)
            except (OSError, RuntimeError) as exc:
                broker.stop()
                last = exc
                log.warning("embedded broker could not start on port %d: %s", port, exc)
                continue
            self._broker, self._port = broker, port
            log.info("embedded MQTT 5 broker listening on %s (config %s)", self.url, config)
            return self
        self._cleanup_workdir()
        raise EmbeddedBrokerError(f"embedded broker did not start: {last}")

    def stop(self) -> None:
        """Terminate the broker process and remove its config; safe to call twice."""
        broker, self._broker = self._broker, None
        try:
            if broker is not None:
                broker.stop()
                log.info("embedded broker on port %s stopped", self._port)
        finally:
            self._port = None
            self._cleanup_workdir()

    def _cleanup_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
