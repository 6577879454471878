"""How a release decision reaches the fleet: the retained manifest + chunks, and the standing command.

The fleet's standing command (a signed rollback) is retained on one fleet-wide topic, so an
agent that was offline gets it when it reconnects; publishing a newer release clears it. A
device's pin or unpin is retained the same way on that device's command topic.
"""

from __future__ import annotations

import threading
from typing import Protocol

from server.release.publisher import ACK_TIMEOUT_S, publish_release
from shared import topics
from shared.mqtt import MqttClient
from shared.schemas import ModelManifest


class ReleaseChannel(Protocol):
    def publish_release(self, manifest: ModelManifest, artifact: bytes) -> None: ...

    def publish_fleet_command(self, payload: bytes) -> None:
        """Retained; an empty payload clears the standing command."""
        ...

    def publish_device_command(self, device_id: str, payload: bytes) -> None:
        """Retained on the device's own topic: its latest pin or unpin, delivered when it reconnects."""
        ...

    def publish_device_config(self, device_id: str, payload: bytes) -> None:
        """Retained on the device's config topic: its latest remote settings."""
        ...


class MqttReleaseChannel:
    def __init__(self, client: MqttClient, fleet: str) -> None:
        self.client = client
        self.fleet = fleet

    def publish_release(self, manifest: ModelManifest, artifact: bytes) -> None:
        publish_release(self.client, self.fleet, manifest, artifact)

    def publish_fleet_command(self, payload: bytes) -> None:
        self.client.publish_and_wait(
            topics.fleet_commands(self.fleet), payload, qos=1, retain=True, timeout=ACK_TIMEOUT_S
        )

    def publish_device_command(self, device_id: str, payload: bytes) -> None:
        self.client.publish_and_wait(
            topics.commands(self.fleet, device_id), payload, qos=1, retain=True, timeout=ACK_TIMEOUT_S
        )

    def publish_device_config(self, device_id: str, payload: bytes) -> None:
        self.client.publish_and_wait(
            topics.device_config(self.fleet, device_id), payload, qos=1, retain=True, timeout=ACK_TIMEOUT_S
        )


class InMemoryReleaseChannel:
    """Keeps what would be retained on the broker: the release manifest and the standing command."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.releases: list[ModelManifest] = []
        self.command: bytes = b""
        self.device_commands: dict[str, bytes] = {}
        self.device_configs: dict[str, bytes] = {}

    def publish_release(self, manifest: ModelManifest, artifact: bytes) -> None:
        with self._lock:
            self.releases.append(manifest)

    def publish_fleet_command(self, payload: bytes) -> None:
        with self._lock:
            self.command = payload

    def publish_device_command(self, device_id: str, payload: bytes) -> None:
        with self._lock:
            self.device_commands[device_id] = payload

    def publish_device_config(self, device_id: str, payload: bytes) -> None:
        with self._lock:
            self.device_configs[device_id] = payload
