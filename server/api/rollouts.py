"""The rollout view: which version the fleet serves, and how each device answered each command."""

from __future__ import annotations

import time
from typing import Any

from server.registry.records import AckRecord, CommandRecord, DeviceRecord, ModelVersionRecord
from shared.commands import REMOTE_SETTINGS


def rollout_share(devices: list[DeviceRecord], release: int | None) -> float:
    """Share of the (non-revoked) fleet serving the release; 0 when nothing is known."""
    counted = [d for d in devices if not d.revoked]
    if not counted or release is None:
        return 0.0
    return sum(1 for d in counted if d.serving_version == release) / len(counted)


def rollouts_view(
    devices: list[DeviceRecord],
    versions: list[ModelVersionRecord],
    commands: list[CommandRecord],
    acks: list[AckRecord],
    online_window_s: float,
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    counted = [d for d in devices if not d.revoked]
    release = next((m.version for m in versions if m.stage == "published"), None)
    by_command: dict[str, list[AckRecord]] = {}
    for ack in acks:
        by_command.setdefault(ack.command_id, []).append(ack)
    serving_versions = {d.serving_version for d in counted if d.serving_version is not None}
    commanded = {c.version for c in commands if c.version is not None}
    released = {m.version for m in versions if m.stage in ("published", "withdrawn")}
    shown = sorted(released | serving_versions | commanded)
    stages = {m.version: m.stage for m in versions}
    entries = []
    for version in reversed(shown):
        serving = sorted(d.device_id for d in counted if d.serving_version == version)
        entries.append(
            {
                "version": version,
                "stage": stages.get(version),
                "is_release": version == release,
                "devices_serving": serving,
                "online_serving": sum(
                    1 for d in counted if d.serving_version == version and d.online(now, online_window_s)
                ),
                "share": len(serving) / len(counted) if counted else 0.0,
                "commands": [
                    {
                        "command_id": c.command_id,
                        "kind": c.kind,
                        "device_id": c.device_id,  # pin/unpin: the one device
                        "issued_by": c.issued_by,
                        "issued_at": c.issued_at,
                        "expires_at": c.expires_at,
                        "acks": {
                            a.device_id: {
                                "accepted": a.accepted,
                                "reason": a.reason,
                                "serving_version": a.serving_version,
                                "at": a.at,
                            }
                            for a in by_command.get(c.command_id, [])
                        },
                    }
                    for c in commands
                    if c.version == version
                ],
            }
        )
    configs = [
        {
            "command_id": c.command_id,
            "device_id": c.device_id,
            "settings": c.payload.get("settings", {}),
            "issued_by": c.issued_by,
            "issued_at": c.issued_at,
            "acks": {
                a.device_id: {"accepted": a.accepted, "reason": a.reason, "at": a.at}
                for a in by_command.get(c.command_id, [])
            },
        }
        for c in commands
        if c.kind == "config"
    ]
    return {
        "release": release,
        "fleet_size": len(counted),
        "revoked": sorted(d.device_id for d in devices if d.revoked),
        "release_share": rollout_share(devices, release),
        "versions": entries,
        "configs": configs,  # remote settings sent to devices, newest first, with their answers
    }


def config_state(command: CommandRecord, ack: AckRecord | None, now: float) -> str:
    """``applied``, ``refused``, ``pending`` (not answered yet) or ``expired`` (never answered in time)."""
    if ack is not None:
        return "applied" if ack.accepted else "refused"
    return "expired" if now > command.expires_at else "pending"


def applied_config(device_id: str, configs: list[CommandRecord], acks: list[AckRecord]) -> CommandRecord | None:
    """The newest of ``configs`` (newest first) that the device applied."""
    accepted = {a.command_id for a in acks if a.device_id == device_id and a.accepted}
    return next((c for c in configs if c.command_id in accepted), None)


def device_config_view(
    device_id: str,
    configs: list[CommandRecord],
    acks: list[AckRecord],
    *,
    history: int = 20,
    now: float | None = None,
) -> dict[str, Any]:
    """A device's remote settings: what it runs now, and the last ``history`` configs sent with its answers.

    ``configs`` are the device's config commands, newest first. A config replaces every
    earlier one whole, so what is in effect is the newest one the device applied (none: its
    local settings), and a refused or unanswered later one changes nothing on the device.
    """
    now = time.time() if now is None else now
    answers = {a.command_id: a for a in acks if a.device_id == device_id}

    def entry(command: CommandRecord) -> dict[str, Any]:
        ack = answers.get(command.command_id)
        return {
            "command_id": command.command_id,
            "settings": command.payload.get("settings", {}),
            "issued_by": command.issued_by,
            "issued_at": command.issued_at,
            "state": config_state(command, ack, now),
            "reason": None if ack is None else ack.reason,
            "answered_at": None if ack is None else ack.at,
        }

    applied = applied_config(device_id, configs, acks)
    return {
        "device_id": device_id,
        "settable": sorted(REMOTE_SETTINGS),
        "in_effect": None if applied is None else entry(applied),  # None: the device's local settings
        "history": [entry(c) for c in configs[:history]],  # newest first
    }
