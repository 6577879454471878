"""From one device status to the telemetry history (called by the fleet monitor's worker)."""

from __future__ import annotations

from server.errors import ServerError
from server.registry.telemetry import TelemetryStore
from server.telemetry.points import point_from_status, quarantine_entries
from shared.schemas import DeviceStatus


class TelemetryWriteError(ServerError):
    """Part of a status could not be stored; every other part was (``failures`` says which, and why)."""

    def __init__(self, device_id: str, failures: list[str]) -> None:
        super().__init__(f"telemetry of {device_id} partly not stored: {'; '.join(failures)}")
        self.device_id = device_id
        self.failures = failures


def failure_reason(exc: BaseException) -> str:
    """One short line: a database error's own message, not the SQL and parameters around it."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200] if lines else 'no message'}"


def record_status(store: TelemetryStore, status: DeviceStatus, received_at: float, retained: bool) -> bool:
    """Store the status as a point; False when it is a replay older than what is stored.

    A retained status is replayed to the server on every (re)subscription: it is trusted
    with its own timestamp, like the device record, and dropped if not newer.

    The quarantine samples and the point are written apart, and each is tried even when
    the other failed: a sample the database refuses must not cost the device its point
    (the agent repeats its samples in every heartbeat, so it would cost every point).
    Failures are raised together afterwards as one ``TelemetryWriteError``.
    """
    at = min(status.ts, received_at) if retained else received_at
    failures: list[str] = []
    if status.recent_quarantine:
        try:
            store.add_quarantine(quarantine_entries(status.device_id, status.recent_quarantine))
        except Exception as exc:  # any store error: the point below must still be tried
            failures.append(f"quarantine samples: {failure_reason(exc)}")
    stored = False
    try:
        latest = store.latest_points(status.device_id, 1)
        if not latest or latest[-1].at < at:
            store.add_point(point_from_status(status, at))
            stored = True
    except Exception as exc:
        failures.append(f"point: {failure_reason(exc)}")
    if failures:
        raise TelemetryWriteError(status.device_id, failures)
    return stored
