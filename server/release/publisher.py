"""Puts a signed release on the broker: chunks first, then the manifest, all retained QoS 1.

Order matters: an agent that sees the manifest subscribes to the chunks and must find
them retained already. Publishing waits for the broker's acknowledgement of every message,
so when this returns the release is on the broker.
"""

from __future__ import annotations

import logging

from shared import topics
from shared.bundle import split_chunks
from shared.errors import BundleError
from shared.mqtt import MqttClient, MqttError
from shared.schemas import ModelManifest

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 30.0


def publish_chunks(
    client: MqttClient, fleet: str, manifest: ModelManifest, model_bytes: bytes, indices: list[int] | None = None
) -> int:
    """Publish chunks (all, or ``indices``) retained; returns how many were sent."""
    chunks = split_chunks(model_bytes, manifest.chunk_size)
    if len(chunks) != manifest.chunk_count:
        raise BundleError(f"{len(chunks)} chunks but the manifest says {manifest.chunk_count}")
    wanted = range(len(chunks)) if indices is None else [i for i in indices if 0 <= i < len(chunks)]
    mids = [
        client.publish(topics.chunk(fleet, manifest.task, manifest.version, i), chunks[i], qos=1, retain=True)
        for i in wanted
    ]
    for mid in mids:
        if not client.wait_published(mid, ACK_TIMEOUT_S):
            raise MqttError(f"chunk of {manifest.task} v{manifest.version} not acknowledged in {ACK_TIMEOUT_S} s")
    return len(mids)


def publish_release(client: MqttClient, fleet: str, manifest: ModelManifest, model_bytes: bytes) -> None:
    sent = publish_chunks(client, fleet, manifest, model_bytes)
    client.publish_and_wait(
        topics.manifest(fleet, manifest.task), manifest.to_bytes(), qos=1, retain=True, timeout=ACK_TIMEOUT_S
    )
    log.info("published %s v%d to fleet %s: %d chunks + manifest", manifest.task, manifest.version, fleet, sent)


def clear_release(client: MqttClient, fleet: str, task: str, version: int, chunk_count: int) -> None:
    """Remove an old version's retained chunks (an empty retained payload deletes them)."""
    mids = [client.publish(topics.chunk(fleet, task, version, i), b"", qos=1, retain=True) for i in range(chunk_count)]
    for mid in mids:
        client.wait_published(mid, ACK_TIMEOUT_S)
    log.info("cleared %d retained chunks of %s v%d in fleet %s", chunk_count, task, version, fleet)


def clear_fleet_command(client: MqttClient, fleet: str) -> None:
    """A new release supersedes any standing rollback command: remove it from the broker."""
    client.publish_and_wait(topics.fleet_commands(fleet), b"", qos=1, retain=True, timeout=ACK_TIMEOUT_S)
