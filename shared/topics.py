"""Every MQTT topic of the fedforge v1 wire contract, built and parsed in one place.

No other module spells a topic string: they call these functions, so a change of the
topic tree is a change of this file alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from shared.errors import TopicError

ROOT = "fedforge/v1"

DeviceChannel = Literal["ingest", "labels", "predictions", "status", "commands", "config", "models/request", "acks"]
DEVICE_CHANNELS: tuple[DeviceChannel, ...] = (
    "ingest",
    "labels",
    "predictions",
    "status",
    "commands",
    "config",
    "models/request",
    "acks",
)

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

QOS_AT_LEAST_ONCE = 1


def _check(kind: str, value: str) -> str:
    if not _SEGMENT.match(value):
        raise TopicError(f"invalid {kind} {value!r}: use 1-64 of [A-Za-z0-9_.-], not starting with a symbol")
    return value


def device_topic(fleet: str, device: str, channel: DeviceChannel) -> str:
    if channel not in DEVICE_CHANNELS:
        raise TopicError(f"unknown device channel {channel!r}")
    return f"{ROOT}/{_check('fleet', fleet)}/devices/{_check('device', device)}/{channel}"


def ingest(fleet: str, device: str) -> str:
    return device_topic(fleet, device, "ingest")


def labels(fleet: str, device: str) -> str:
    return device_topic(fleet, device, "labels")


def predictions(fleet: str, device: str) -> str:
    return device_topic(fleet, device, "predictions")


def status(fleet: str, device: str) -> str:
    return device_topic(fleet, device, "status")


def commands(fleet: str, device: str) -> str:
    return device_topic(fleet, device, "commands")


def device_config(fleet: str, device: str) -> str:
    """Cloud -> one agent, retained: its signed remote settings. Not on ``commands``: a retained
    topic keeps one message, and a config must not displace a pin the device has not seen yet."""
    return device_topic(fleet, device, "config")


def model_request(fleet: str, device: str) -> str:
    return device_topic(fleet, device, "models/request")


def acks(fleet: str, device: str) -> str:
    """Agent -> cloud: its answers to commands (CommandAck)."""
    return device_topic(fleet, device, "acks")


def fleet_commands(fleet: str) -> str:
    """Cloud -> every agent, retained: the fleet's standing command (a signed rollback), or empty."""
    return f"{ROOT}/{_check('fleet', fleet)}/commands"


def federation_call(fleet: str) -> str:
    """Cloud -> every agent, retained: the fleet's federation call (a training run opened or ended)."""
    return f"{ROOT}/{_check('fleet', fleet)}/federation"


def manifest(fleet: str, task: str) -> str:
    return f"{ROOT}/{_check('fleet', fleet)}/models/{_check('task', task)}/manifest"


def chunk(fleet: str, task: str, version: int, index: int) -> str:
    if version < 0 or index < 0:
        raise TopicError("version and chunk index must be non-negative")
    return f"{ROOT}/{_check('fleet', fleet)}/models/{_check('task', task)}/{version}/chunk/{index}"


def chunks_filter(fleet: str, task: str, version: int) -> str:
    """Subscription filter for every chunk of one model version."""
    return f"{ROOT}/{_check('fleet', fleet)}/models/{_check('task', task)}/{version}/chunk/+"


def all_status_filter(fleet: str) -> str:
    """Subscription filter the cloud uses to follow the whole fleet."""
    return f"{ROOT}/{_check('fleet', fleet)}/devices/+/status"


def all_acks_filter(fleet: str) -> str:
    return f"{ROOT}/{_check('fleet', fleet)}/devices/+/acks"


def all_requests_filter(fleet: str) -> str:
    return f"{ROOT}/{_check('fleet', fleet)}/devices/+/models/request"


@dataclass(frozen=True)
class ParsedTopic:
    fleet: str
    kind: Literal["device", "manifest", "chunk"]
    device: str | None = None
    channel: str | None = None
    task: str | None = None
    version: int | None = None
    index: int | None = None


def parse(topic: str) -> ParsedTopic:
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != ROOT:
        raise TopicError(f"not a fedforge v1 topic: {topic!r}")
    fleet = _check("fleet", parts[2])
    if parts[3] == "devices":
        device = _check("device", parts[4])
        channel = "/".join(parts[5:])
        if channel not in DEVICE_CHANNELS:
            raise TopicError(f"unknown device channel in {topic!r}")
        return ParsedTopic(fleet=fleet, kind="device", device=device, channel=channel)
    if parts[3] == "models":
        task = _check("task", parts[4])
        if len(parts) == 6 and parts[5] == "manifest":
            return ParsedTopic(fleet=fleet, kind="manifest", task=task)
        if len(parts) == 8 and parts[6] == "chunk" and _ascii_number(parts[5]) and _ascii_number(parts[7]):
            return ParsedTopic(fleet=fleet, kind="chunk", task=task, version=int(parts[5]), index=int(parts[7]))
    raise TopicError(f"not a fedforge v1 topic: {topic!r}")


def _ascii_number(part: str) -> bool:
    """``str.isdigit`` also takes "²" (which ``int`` refuses) and "٣" (which it reads as 3)."""
    return part.isascii() and part.isdigit()
