"""The dashboard's JSON read endpoints and its live event stream (viewer role and up).

Each handler reads the registry and the telemetry store off the event loop and hands the
records to the pure views in ``server.telemetry.fleet``.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from server.api.errors import ApiNotFoundError
from server.api.security import require_viewer
from server.api.views import fleet_device
from server.config import ServerSettings
from server.registry.records import Registry
from server.registry.telemetry import QUARANTINE_KEEP, TelemetryStore
from server.telemetry.fleet import RATE_POINTS, compare_models, device_row, fleet_summary, lineage
from server.telemetry.points import series

# How often the event stream sends a fresh fleet summary.
EVENT_INTERVAL_S = 2.0
# Pages opened together share one snapshot this long.
SNAPSHOT_TTL_S = 1.0
# One stream ends after this long; EventSource reconnects by itself (and re-authenticates).
EVENT_STREAM_MAX_S = 900.0
# Devices' telemetry charts default to this much history.
DEFAULT_HISTORY_S = 3600.0


def fleet_snapshot(settings: ServerSettings, registry: Registry, telemetry: TelemetryStore) -> dict[str, Any]:
    now = time.time()
    devices = registry.list_devices(settings.fleet)
    points = telemetry.latest_points_many([d.device_id for d in devices], RATE_POINTS)
    rows = [device_row(d, points[d.device_id], now, settings.online_window_s) for d in devices]
    latest = registry.latest_published(settings.task)
    summary = fleet_summary(rows, None if latest is None else latest.version, now)
    audit = registry.list_audit(1)
    runs = registry.list_runs()
    summary["last_audit_id"] = audit[0].id if audit else 0
    summary["runs"] = {"count": len(runs), "running": sum(1 for r in runs if r.status == "running")}
    summary["models"] = len(registry.list_model_versions(settings.task))
    return summary


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None.

    The browser's ``JSON.parse`` refuses the ``NaN`` / ``Infinity`` tokens Python writes by
    default, and one such value (a row stored before statuses were checked, say) would stop
    the live view of every open page.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def event_data(snapshot: dict[str, Any]) -> str:
    """One snapshot as strict JSON (``allow_nan=False``: a non-finite value that escaped
    ``json_safe`` is an error here, not a broken stream in every browser)."""
    return json.dumps(json_safe(snapshot), separators=(",", ":"), allow_nan=False)


class SnapshotCache:
    """One fleet snapshot shared by every open page for ``ttl_s``.

    Each connected browser polls the summary through its event stream; without sharing,
    N pages would cost N registry scans every interval.
    """

    def __init__(self, build: Callable[[], dict[str, Any]], ttl_s: float) -> None:
        self._build = build
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at = 0.0

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._at >= self._ttl_s:
                self._value = self._build()
                self._at = time.monotonic()
            return self._value


def install_dashboard_routes(
    app: FastAPI, settings: ServerSettings, registry: Registry, telemetry: TelemetryStore
) -> None:
    """Viewer routes, registered on the app itself (see ``install_read_routes``)."""
    viewer = [Depends(require_viewer)]
    fleet = settings.fleet
    snapshots = SnapshotCache(lambda: fleet_snapshot(settings, registry, telemetry), SNAPSHOT_TTL_S)
    task = settings.task

    async def _device_or_404(device_id: str) -> None:
        await run_in_threadpool(fleet_device, registry, fleet, device_id)

    @app.get("/api/fleet/summary", dependencies=viewer)
    async def fleet_summary_endpoint() -> dict[str, Any]:
        return await run_in_threadpool(snapshots.get)

    @app.get("/api/devices/{device_id}/telemetry", dependencies=viewer)
    async def device_telemetry(
        device_id: str,
        since: float | None = Query(None, allow_inf_nan=False),
        window_s: float = Query(DEFAULT_HISTORY_S, gt=0, allow_inf_nan=False),
    ) -> dict[str, Any]:
        await _device_or_404(device_id)
        start = since if since is not None else time.time() - window_s
        points = await run_in_threadpool(telemetry.list_points, device_id, start)
        return {"device_id": device_id, "since": start, "points": series(points)}

    @app.get("/api/devices/{device_id}/quarantine", dependencies=viewer)
    async def device_quarantine(
        device_id: str, limit: int = Query(QUARANTINE_KEEP, ge=1, le=QUARANTINE_KEEP)
    ) -> list[dict[str, Any]]:
        await _device_or_404(device_id)
        entries = await run_in_threadpool(telemetry.list_quarantine, device_id, limit)
        return [{"at": e.at, "record_id": e.record_id, "reason": e.reason, "excerpt": e.excerpt} for e in entries]

    @app.get("/api/models/compare", dependencies=viewer)
    async def models_compare(a: int, b: int) -> dict[str, Any]:
        models = await run_in_threadpool(registry.list_model_versions, task)
        by_version = {m.version: m for m in models}
        for v in (a, b):
            if v not in by_version:
                raise ApiNotFoundError(f"model version {v} of task {task!r} not found")
        return compare_models(by_version[a], by_version[b], models)

    @app.get("/api/models/{version}/lineage", dependencies=viewer)
    async def model_lineage(version: int) -> list[int]:
        models = await run_in_threadpool(registry.list_model_versions, task)
        chain = lineage(models, version)
        if not chain:
            raise ApiNotFoundError(f"model version {version} of task {task!r} not found")
        return chain

    # Not in the OpenAPI schema: an endless text/event-stream is no JSON operation to fuzz.
    @app.get("/api/events", dependencies=viewer, include_in_schema=False)
    async def events(request: Request, limit: int | None = Query(None, ge=1)) -> StreamingResponse:
        """Server-sent events: a ``fleet`` event with the summary every few seconds."""
        interval = float(getattr(request.app.state, "event_interval_s", EVENT_INTERVAL_S))
        ends = time.monotonic() + EVENT_STREAM_MAX_S

        async def stream() -> AsyncIterator[str]:
            sent = 0
            yield f"retry: {int(interval * 1000)}\n\n"
            while (limit is None or sent < limit) and time.monotonic() < ends:
                snapshot = await run_in_threadpool(snapshots.get)
                yield f"event: fleet\ndata: {event_data(snapshot)}\n\n"
                sent += 1
                if limit is not None and sent >= limit:
                    break
                await asyncio.sleep(interval)
                if await request.is_disconnected():
                    break

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
