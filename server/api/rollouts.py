"""The rollout view: which version the fleet serves, and how each device answered each command."""

from __future__ import annotations

import time
from typing import Any

from server.registry.records import AckRecord, CommandRecord, DeviceRecord, ModelVersionRecord


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
                        "device_id": c.payload.get("device_id"),  # pin/unpin: the one device
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
            "device_id": c.payload.get("device_id"),
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
