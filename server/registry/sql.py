"""``SqlRegistry``: the registry on SQLAlchemy 2 (SQLite by default, PostgreSQL tested).

Each method is one short transaction, so the API, the fleet monitor's worker and the
ServerApp can share one registry across threads. The schema is owned by Alembic
(``server.registry.migrate``); this class never creates tables itself.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from server.errors import NotFoundError, RegistryError
from server.registry.migrate import ensure_sqlite_dir
from server.registry.models import AuditLog, Device, FleetCommand, ModelVersion, Round, TrainingRun
from server.registry.models import CommandAck as CommandAckRow
from server.registry.records import (
    STAGES,
    AckRecord,
    AuditEntry,
    CommandRecord,
    DeviceRecord,
    ModelVersionRecord,
    RoundRecord,
    RunRecord,
    RunStatus,
    Stage,
    device_record_from_status,
)
from shared.schemas import DeviceStatus


def make_engine(database_url: str) -> Engine:
    ensure_sqlite_dir(database_url)
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while the monitor writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True)


def _device(row: Device) -> DeviceRecord:
    return DeviceRecord(
        device_id=row.device_id,
        fleet=row.fleet,
        last_seen=row.last_seen,
        serving_version=row.serving_version,
        status=row.status,
        health=row.health,
        counters={k: int(v) for k, v in row.counters.items()},
        signature_verified=row.signature_verified,
        last_rejection=row.last_rejection,
        queue_depth=row.queue_depth,
        scoring_latency_ms_p50=row.scoring_latency_ms_p50,
        public_key=row.public_key,
        revoked=row.revoked,
        pinned_version=row.pinned_version,
    )


def _model(row: ModelVersion) -> ModelVersionRecord:
    stage: Stage = row.stage  # type: ignore[assignment]  # guarded by the CHECK constraint
    return ModelVersionRecord(
        task=row.task,
        version=row.version,
        parent_version=row.parent_version,
        training_run_id=row.training_run_id,
        created=row.created,
        metrics={k: float(v) for k, v in row.metrics.items()},
        sha256=row.sha256,
        size=row.size,
        signer=row.signer,
        signature=row.signature,
        manifest=row.manifest,
        stage=stage,
    )


def _run(row: TrainingRun) -> RunRecord:
    status: RunStatus = row.status  # type: ignore[assignment]  # guarded by the CHECK constraint
    return RunRecord(
        run_id=row.run_id,
        flower_run_id=row.flower_run_id,
        status=status,
        rounds=row.rounds,
        started=row.started,
        finished=row.finished,
        error=row.error,
        published_version=row.published_version,
        strategy=row.strategy,
    )


def _round(row: Round) -> RoundRecord:
    return RoundRecord(
        run_id=row.run_id,
        round=row.round,
        participants=row.participants,
        failures=row.failures,
        metrics={k: float(v) for k, v in row.metrics.items()},
        duration_s=row.duration_s,
    )


class SqlRegistry:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.engine = make_engine(database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _session(self) -> Session:
        return self._sessions()

    # -- devices ------------------------------------------------------------------
    def upsert_device_status(self, status: DeviceStatus, *, received_at: float, retained: bool = False) -> None:
        with self._session() as s, s.begin():
            row = s.get(Device, status.device_id)
            record = device_record_from_status(status, received_at, retained, row.public_key if row else None)
            values = {
                "fleet": record.fleet,
                "last_seen": record.last_seen,
                "serving_version": record.serving_version,
                "status": record.status,
                "health": record.health,
                "counters": record.counters,
                "signature_verified": record.signature_verified,
                "last_rejection": record.last_rejection,
                "queue_depth": record.queue_depth,
                "scoring_latency_ms_p50": record.scoring_latency_ms_p50,
                "pinned_version": record.pinned_version,
            }
            if row is None:
                s.add(Device(device_id=record.device_id, public_key=None, revoked=False, **values))
            else:
                for name, value in values.items():
                    setattr(row, name, value)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self._session() as s:
            row = s.get(Device, device_id)
            return None if row is None else _device(row)

    def list_devices(self, fleet: str | None = None) -> list[DeviceRecord]:
        query = select(Device).order_by(Device.device_id)
        if fleet is not None:
            query = query.where(Device.fleet == fleet)
        with self._session() as s:
            return [_device(r) for r in s.scalars(query)]

    def set_device_revoked(self, device_id: str, revoked: bool) -> DeviceRecord:
        with self._session() as s, s.begin():
            row = s.get(Device, device_id)
            if row is None:
                raise NotFoundError(f"no device {device_id}")
            row.revoked = revoked
            return _device(row)

    # -- model versions -----------------------------------------------------------
    def next_version(self, task: str) -> int:
        with self._session() as s:
            current = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.task == task))
            return int(current or 0) + 1

    def add_model_version(self, record: ModelVersionRecord, artifact: bytes) -> None:
        if record.stage not in STAGES:
            raise RegistryError(f"unknown stage {record.stage!r}")
        row = ModelVersion(
            task=record.task,
            version=record.version,
            parent_version=record.parent_version,
            training_run_id=record.training_run_id,
            created=record.created,
            metrics=dict(record.metrics),
            sha256=record.sha256,
            size=record.size,
            signer=record.signer,
            signature=record.signature,
            manifest=dict(record.manifest),
            artifact=bytes(artifact),
            stage=record.stage,
        )
        try:
            with self._session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise RegistryError(f"model {record.task} v{record.version} already exists") from None

    def get_model_version(self, task: str, version: int) -> ModelVersionRecord | None:
        with self._session() as s:
            row = s.get(ModelVersion, (task, version))
            return None if row is None else _model(row)

    def get_artifact(self, task: str, version: int) -> bytes | None:
        query = select(ModelVersion.artifact).where(ModelVersion.task == task, ModelVersion.version == version)
        with self._session() as s:
            data = s.scalar(query)
            return None if data is None else bytes(data)

    def latest_published(self, task: str) -> ModelVersionRecord | None:
        query = (
            select(ModelVersion)
            .where(ModelVersion.task == task, ModelVersion.stage == "published")
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        with self._session() as s:
            row = s.scalar(query)
            return None if row is None else _model(row)

    def list_model_versions(self, task: str) -> list[ModelVersionRecord]:
        query = select(ModelVersion).where(ModelVersion.task == task).order_by(ModelVersion.version.desc())
        with self._session() as s:
            return [_model(r) for r in s.scalars(query)]

    def set_stage(self, task: str, version: int, stage: Stage) -> None:
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}")
        with self._session() as s, s.begin():
            row = s.get(ModelVersion, (task, version))
            if row is None:
                raise NotFoundError(f"no model {task} v{version}")
            row.stage = stage

    # -- training runs ------------------------------------------------------------
    def start_run(
        self,
        run_id: str,
        rounds: int,
        *,
        flower_run_id: str | int | None = None,
        started: float,
        strategy: str | None = None,
    ) -> RunRecord:
        row = TrainingRun(
            run_id=run_id,
            flower_run_id=None if flower_run_id is None else str(flower_run_id),
            status="running",
            rounds=rounds,
            started=started,
            finished=None,
            error=None,
            published_version=None,
            strategy=strategy,
        )
        try:
            with self._session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise RegistryError(f"run {run_id} already exists") from None
        return _run(row)

    def set_flower_run_id(self, run_id: str, flower_run_id: str | int) -> None:
        with self._session() as s, s.begin():
            row = s.get(TrainingRun, run_id)
            if row is None:
                raise NotFoundError(f"no run {run_id}")
            row.flower_run_id = str(flower_run_id)

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        finished: float,
        error: str | None = None,
        published_version: int | None = None,
    ) -> None:
        with self._session() as s, s.begin():
            row = s.get(TrainingRun, run_id)
            if row is None:
                raise NotFoundError(f"no run {run_id}")
            row.status = status
            row.finished = finished
            row.error = error
            row.published_version = published_version

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._session() as s:
            row = s.get(TrainingRun, run_id)
            return None if row is None else _run(row)

    def list_runs(self) -> list[RunRecord]:
        query = select(TrainingRun).order_by(TrainingRun.started.desc(), TrainingRun.run_id)
        with self._session() as s:
            return [_run(r) for r in s.scalars(query)]

    def add_round(self, record: RoundRecord) -> None:
        with self._session() as s, s.begin():
            if s.get(TrainingRun, record.run_id) is None:
                raise NotFoundError(f"no run {record.run_id}")
            s.merge(
                Round(
                    run_id=record.run_id,
                    round=record.round,
                    participants=record.participants,
                    failures=record.failures,
                    metrics=dict(record.metrics),
                    duration_s=record.duration_s,
                )
            )

    def list_rounds(self, run_id: str | None = None) -> list[RoundRecord]:
        query = select(Round).order_by(Round.run_id, Round.round)
        if run_id is not None:
            query = query.where(Round.run_id == run_id)
        with self._session() as s:
            return [_round(r) for r in s.scalars(query)]

    # -- audit --------------------------------------------------------------------
    def audit(self, actor: str, action: str, detail: dict[str, Any], *, at: float | None = None) -> None:
        with self._session() as s, s.begin():
            s.add(AuditLog(at=time.time() if at is None else at, actor=actor, action=action, detail=dict(detail)))

    def list_audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AuditLog.id < before)
        with self._session() as s:
            return [AuditEntry(r.id, r.at, r.actor, r.action, r.detail) for r in s.scalars(query)]

    # -- fleet commands and acknowledgements ---------------------------------------
    def add_command(self, record: CommandRecord) -> None:
        row = FleetCommand(
            command_id=record.command_id,
            fleet=record.fleet,
            task=record.task,
            kind=record.kind,
            version=record.version,
            issued_at=record.issued_at,
            expires_at=record.expires_at,
            issued_by=record.issued_by,
            payload=dict(record.payload),
            device_id=record.device_id,
        )
        try:
            with self._session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise RegistryError(f"command {record.command_id} already exists") from None

    def list_commands(
        self, fleet: str | None = None, limit: int = 100, *, kind: str | None = None, device_id: str | None = None
    ) -> list[CommandRecord]:
        query = select(FleetCommand).order_by(FleetCommand.issued_at.desc()).limit(limit)
        if fleet is not None:
            query = query.where(FleetCommand.fleet == fleet)
        if kind is not None:
            query = query.where(FleetCommand.kind == kind)
        if device_id is not None:
            query = query.where(FleetCommand.device_id == device_id)
        with self._session() as s:
            return [
                CommandRecord(
                    r.command_id, r.fleet, r.task, r.kind, r.version, r.issued_at, r.expires_at, r.issued_by, r.payload
                )
                for r in s.scalars(query)
            ]

    def record_ack(self, ack: AckRecord) -> None:
        with self._session() as s, s.begin():
            s.merge(
                CommandAckRow(
                    command_id=ack.command_id,
                    device_id=ack.device_id,
                    accepted=ack.accepted,
                    reason=ack.reason,
                    serving_version=ack.serving_version,
                    at=ack.at,
                )
            )

    def list_acks(
        self, command_id: str | None = None, *, command_ids: Collection[str] | None = None
    ) -> list[AckRecord]:
        query = select(CommandAckRow).order_by(CommandAckRow.command_id, CommandAckRow.device_id)
        if command_id is not None:
            query = query.where(CommandAckRow.command_id == command_id)
        if command_ids is not None:
            query = query.where(CommandAckRow.command_id.in_(list(command_ids)))
        with self._session() as s:
            return [
                AckRecord(r.command_id, r.device_id, r.accepted, r.reason, r.serving_version, r.at)
                for r in s.scalars(query)
            ]

    def close(self) -> None:
        self.engine.dispose()
