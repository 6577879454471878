"""From one device status to the telemetry history (called by the fleet monitor's worker)."""

from __future__ import annotations

from server.registry.telemetry import TelemetryStore
from server.telemetry.points import point_from_status, quarantine_entries
from shared.schemas import DeviceStatus


def record_status(store: TelemetryStore, status: DeviceStatus, received_at: float, retained: bool) -> bool:
    """Store the status as a point; False when it is a replay older than what is stored.

    A retained status is replayed to the server on every (re)subscription: it is trusted
    with its own timestamp, like the device record, and dropped if not newer.
    """
    at = min(status.ts, received_at) if retained else received_at
    if status.recent_quarantine:
        store.add_quarantine(quarantine_entries(status.device_id, status.recent_quarantine))
    latest = store.latest_points(status.device_id, 1)
    if latest and latest[-1].at >= at:
        return False
    store.add_point(point_from_status(status, at))
    return True
