"""``SqlTelemetryStore``: telemetry history in the registry's database (SQLite or PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from server.registry.models import QuarantineSampleRow, TelemetryRow
from server.registry.telemetry import PRUNE_EVERY, QUARANTINE_KEEP
from server.telemetry.points import QuarantineEntry, TelemetryPoint
from server.telemetry.retention import RetentionPolicy, points_to_drop


def _point(r: TelemetryRow) -> TelemetryPoint:
    return TelemetryPoint(
        device_id=r.device_id,
        at=r.at,
        ingested=r.ingested,
        quarantined=r.quarantined,
        scored=r.scored,
        serving_version=r.serving_version,
        scoring_latency_ms=r.scoring_latency_ms,
        drift_score=r.drift_score,
        drift_feature=r.drift_feature,
        drift_shift=r.drift_shift,
        queue_depth=r.queue_depth,
        kind=r.kind,
    )


def _entry(r: QuarantineSampleRow) -> QuarantineEntry:
    return QuarantineEntry(r.device_id, r.at, r.record_id, r.reason, r.excerpt)


class SqlTelemetryStore:
    """Shares the registry's engine; the schema is owned by Alembic like the registry's."""

    def __init__(self, engine: Engine, policy: RetentionPolicy | None = None, prune_every: int = PRUNE_EVERY) -> None:
        self.engine = engine
        self.policy = policy or RetentionPolicy()
        self._prune_every = prune_every
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._lock = threading.Lock()
        self._since_prune: dict[str, int] = defaultdict(int)

    def _session(self) -> Session:
        return self._sessions()

    def add_point(self, point: TelemetryPoint) -> None:
        with self._session() as s, s.begin():
            s.add(
                TelemetryRow(
                    device_id=point.device_id,
                    at=point.at,
                    ingested=point.ingested,
                    quarantined=point.quarantined,
                    scored=point.scored,
                    serving_version=point.serving_version,
                    scoring_latency_ms=point.scoring_latency_ms,
                    drift_score=point.drift_score,
                    drift_feature=point.drift_feature,
                    drift_shift=point.drift_shift,
                    queue_depth=point.queue_depth,
                    kind=point.kind,
                )
            )
        with self._lock:
            self._since_prune[point.device_id] += 1
            due = self._since_prune[point.device_id] >= self._prune_every
        if due:
            self.prune(point.device_id)

    def list_points(self, device_id: str, since: float | None = None) -> list[TelemetryPoint]:
        query = select(TelemetryRow).where(TelemetryRow.device_id == device_id)
        if since is not None:
            query = query.where(TelemetryRow.at >= since)
        with self._session() as s:
            return [_point(r) for r in s.scalars(query.order_by(TelemetryRow.at, TelemetryRow.id))]

    def latest_points(self, device_id: str, n: int) -> list[TelemetryPoint]:
        if n <= 0:
            return []
        query = (
            select(TelemetryRow)
            .where(TelemetryRow.device_id == device_id)
            .order_by(TelemetryRow.at.desc(), TelemetryRow.id.desc())
            .limit(n)
        )
        with self._session() as s:
            return [_point(r) for r in reversed(list(s.scalars(query)))]

    def latest_points_many(self, device_ids: Sequence[str], n: int) -> dict[str, list[TelemetryPoint]]:
        out: dict[str, list[TelemetryPoint]] = {d: [] for d in device_ids}
        if n <= 0 or not device_ids:
            return out
        # One query for the whole fleet: rank each device's points newest first, keep n each.
        rank = (
            func.row_number()
            .over(partition_by=TelemetryRow.device_id, order_by=(TelemetryRow.at.desc(), TelemetryRow.id.desc()))
            .label("rank")
        )
        ranked = select(TelemetryRow.id, rank).where(TelemetryRow.device_id.in_(list(device_ids))).subquery()
        query = (
            select(TelemetryRow)
            .join(ranked, ranked.c.id == TelemetryRow.id)
            .where(ranked.c.rank <= n)
            .order_by(TelemetryRow.device_id, TelemetryRow.at, TelemetryRow.id)
        )
        with self._session() as s:
            for row in s.scalars(query):
                out[row.device_id].append(_point(row))
        return out

    def add_quarantine(self, entries: Sequence[QuarantineEntry]) -> int:
        added = 0
        by_device: dict[str, list[QuarantineEntry]] = defaultdict(list)
        for e in entries:
            by_device[e.device_id].append(e)
        with self._session() as s, s.begin():
            for device_id, items in by_device.items():
                known = {
                    (r.at, r.record_id, r.reason)
                    for r in s.scalars(select(QuarantineSampleRow).where(QuarantineSampleRow.device_id == device_id))
                }
                for e in items:
                    if e.key in known:
                        continue
                    known.add(e.key)
                    s.add(
                        QuarantineSampleRow(
                            device_id=e.device_id, at=e.at, record_id=e.record_id, reason=e.reason, excerpt=e.excerpt
                        )
                    )
                    added += 1
                s.flush()
                keep = (
                    select(QuarantineSampleRow.id)
                    .where(QuarantineSampleRow.device_id == device_id)
                    .order_by(QuarantineSampleRow.at.desc(), QuarantineSampleRow.id.desc())
                    .limit(QUARANTINE_KEEP)
                )
                kept = list(s.scalars(keep))
                s.execute(
                    delete(QuarantineSampleRow).where(
                        QuarantineSampleRow.device_id == device_id, QuarantineSampleRow.id.not_in(kept)
                    )
                )
        return added

    def list_quarantine(self, device_id: str, limit: int = QUARANTINE_KEEP) -> list[QuarantineEntry]:
        query = (
            select(QuarantineSampleRow)
            .where(QuarantineSampleRow.device_id == device_id)
            .order_by(QuarantineSampleRow.at.desc(), QuarantineSampleRow.id.desc())
            .limit(limit)
        )
        with self._session() as s:
            return [_entry(r) for r in s.scalars(query)]

    def prune(self, device_id: str, now: float | None = None) -> int:
        with self._lock:
            self._since_prune[device_id] = 0
        query = (
            select(TelemetryRow.id, TelemetryRow.at)
            .where(TelemetryRow.device_id == device_id)
            .order_by(TelemetryRow.at, TelemetryRow.id)
        )
        with self._session() as s, s.begin():
            rows = list(s.execute(query))
            drop = points_to_drop([r.at for r in rows], time.time() if now is None else now, self.policy)
            ids = [rows[i].id for i in drop]
            for start in range(0, len(ids), 1000):
                s.execute(delete(TelemetryRow).where(TelemetryRow.id.in_(ids[start : start + 1000])))
        return len(ids)
