"""The telemetry store: device history for the dashboard, its interface and an in-memory one.

Kept apart from ``Registry`` (fleet state, lineage, runs, audit) because it is a
time series with its own retention; ``SqlTelemetryStore`` (``telemetry_sql``) shares the
registry's database.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from server.telemetry.points import QuarantineEntry, TelemetryPoint
from server.telemetry.retention import RetentionPolicy, points_to_drop

# Thinning is a scan of one device's history: do it every this many inserts, not each one.
PRUNE_EVERY = 50
QUARANTINE_KEEP = 50


class TelemetryStore(Protocol):
    def add_point(self, point: TelemetryPoint) -> None: ...

    def list_points(self, device_id: str, since: float | None = None) -> list[TelemetryPoint]:
        """Oldest first."""
        ...

    def latest_points(self, device_id: str, n: int) -> list[TelemetryPoint]:
        """The newest ``n``, oldest first."""
        ...

    def latest_points_many(self, device_ids: Sequence[str], n: int) -> dict[str, list[TelemetryPoint]]:
        """``latest_points`` for many devices in one read (the fleet view); every id is a key."""
        ...

    def add_quarantine(self, entries: Sequence[QuarantineEntry]) -> int:
        """Adds the entries not yet stored; keeps the newest ``QUARANTINE_KEEP`` per device."""
        ...

    def list_quarantine(self, device_id: str, limit: int = QUARANTINE_KEEP) -> list[QuarantineEntry]:
        """Newest first."""
        ...

    def prune(self, device_id: str, now: float | None = None) -> int:
        """Apply the retention policy to one device; returns the number of points dropped."""
        ...


class InMemoryTelemetryStore:
    def __init__(self, policy: RetentionPolicy | None = None, prune_every: int = PRUNE_EVERY) -> None:
        self.policy = policy or RetentionPolicy()
        self._prune_every = prune_every
        self._lock = threading.Lock()
        self._points: dict[str, list[TelemetryPoint]] = defaultdict(list)
        self._quarantine: dict[str, list[QuarantineEntry]] = defaultdict(list)
        self._since_prune: dict[str, int] = defaultdict(int)

    def add_point(self, point: TelemetryPoint) -> None:
        with self._lock:
            points = self._points[point.device_id]
            points.append(point)
            if len(points) > 1 and points[-2].at > point.at:
                points.sort(key=lambda p: p.at)
            self._since_prune[point.device_id] += 1
            due = self._since_prune[point.device_id] >= self._prune_every
        if due:
            self.prune(point.device_id)

    def list_points(self, device_id: str, since: float | None = None) -> list[TelemetryPoint]:
        with self._lock:
            return [p for p in self._points.get(device_id, []) if since is None or p.at >= since]

    def latest_points(self, device_id: str, n: int) -> list[TelemetryPoint]:
        with self._lock:
            return list(self._points.get(device_id, [])[-n:]) if n > 0 else []

    def latest_points_many(self, device_ids: Sequence[str], n: int) -> dict[str, list[TelemetryPoint]]:
        return {d: self.latest_points(d, n) for d in device_ids}

    def add_quarantine(self, entries: Sequence[QuarantineEntry]) -> int:
        added = 0
        with self._lock:
            for e in entries:
                stored = self._quarantine[e.device_id]
                if any(s.key == e.key for s in stored):
                    continue
                stored.append(e)
                stored.sort(key=lambda s: s.at)
                del stored[:-QUARANTINE_KEEP]
                added += 1
        return added

    def list_quarantine(self, device_id: str, limit: int = QUARANTINE_KEEP) -> list[QuarantineEntry]:
        with self._lock:
            return list(reversed(self._quarantine.get(device_id, [])))[:limit]

    def prune(self, device_id: str, now: float | None = None) -> int:
        with self._lock:
            points = self._points.get(device_id, [])
            drop = set(points_to_drop([p.at for p in points], time.time() if now is None else now, self.policy))
            self._points[device_id] = [p for i, p in enumerate(points) if i not in drop]
            self._since_prune[device_id] = 0
            return len(drop)
