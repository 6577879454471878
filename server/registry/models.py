"""SQLAlchemy 2 table models of the registry (typed declarative).

Only portable column types are used (JSON, Double, LargeBinary) so one schema and one
Alembic history serve SQLite and PostgreSQL alike. Times are epoch seconds.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false

# Deterministic constraint names keep Alembic autogenerate and both databases in step.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, float: Double}


class Device(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64), index=True)
    last_seen: Mapped[float]
    serving_version: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16))
    health: Mapped[str] = mapped_column(String(16))
    counters: Mapped[dict[str, Any]]
    signature_verified: Mapped[bool]
    last_rejection: Mapped[dict[str, Any] | None]
    queue_depth: Mapped[int] = mapped_column(Integer, default=0)
    scoring_latency_ms_p50: Mapped[float | None] = mapped_column(Double, nullable=True)
    public_key: Mapped[str | None] = mapped_column(Text)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pinned_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (CheckConstraint("stage IN ('candidate', 'published', 'rejected', 'withdrawn')", name="stage"),)

    task: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parent_version: Mapped[int | None]
    training_run_id: Mapped[str | None] = mapped_column(String(128))
    created: Mapped[float]
    metrics: Mapped[dict[str, Any]]
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    signer: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]]
    artifact: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    stage: Mapped[str] = mapped_column(String(16))


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="status"),)

    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    flower_run_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    rounds: Mapped[int]
    started: Mapped[float]
    finished: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    published_version: Mapped[int | None]
    strategy: Mapped[str | None] = mapped_column(String(32))


class Round(Base):
    __tablename__ = "rounds"

    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    participants: Mapped[int]
    failures: Mapped[int]
    metrics: Mapped[dict[str, Any]]
    duration_s: Mapped[float]


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('viewer', 'operator', 'admin')", name="role"),)

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    created: Mapped[float]
    disabled: Mapped[bool]


class ApiToken(Base):
    __tablename__ = "api_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), ForeignKey("users.username"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[float]
    revoked_at: Mapped[float | None]
    last_used: Mapped[float | None]


class AuthSession(Base):
    __tablename__ = "sessions"

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), ForeignKey("users.username"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created: Mapped[float]
    expires: Mapped[float] = mapped_column(index=True)


class FleetCommand(Base):
    __tablename__ = "fleet_commands"

    command_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64), index=True)
    task: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[int | None]
    issued_at: Mapped[float]
    expires_at: Mapped[float]
    issued_by: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]]
    # A device's own command (pin, unpin, config): its device; a fleet command: null.
    device_id: Mapped[str | None] = mapped_column(String(128), index=True)


class CommandAck(Base):
    __tablename__ = "command_acks"

    command_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    accepted: Mapped[bool]
    reason: Mapped[str] = mapped_column(Text)
    serving_version: Mapped[int | None]
    at: Mapped[float]


# -- telemetry history for the dashboard (0004_telemetry; server.registry.telemetry_sql) --


class TelemetryRow(Base):
    __tablename__ = "telemetry"
    __table_args__ = (Index("ix_telemetry_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[float]
    # Cumulative counts of a long-lived agent pass 2**31 (migration 0007).
    ingested: Mapped[int] = mapped_column(BigInteger)
    quarantined: Mapped[int] = mapped_column(BigInteger)
    scored: Mapped[int] = mapped_column(BigInteger)
    serving_version: Mapped[int | None]
    scoring_latency_ms: Mapped[float | None]
    drift_score: Mapped[float | None]
    queue_depth: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))
    drift_feature: Mapped[str | None] = mapped_column(String(128))
    drift_shift: Mapped[float | None]


class QuarantineSampleRow(Base):
    __tablename__ = "quarantine_samples"
    __table_args__ = (Index("ix_quarantine_samples_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[float]
    record_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text)
