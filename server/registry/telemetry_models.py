"""Table models of the telemetry history (migration 0003_telemetry)."""

from __future__ import annotations

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from server.registry.models import Base


class TelemetryRow(Base):
    __tablename__ = "telemetry"
    __table_args__ = (Index("ix_telemetry_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[float]
    ingested: Mapped[int]
    quarantined: Mapped[int]
    scored: Mapped[int]
    serving_version: Mapped[int | None]
    scoring_latency_ms: Mapped[float | None]
    drift_score: Mapped[float | None]
    queue_depth: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))


class QuarantineSampleRow(Base):
    __tablename__ = "quarantine_samples"
    __table_args__ = (Index("ix_quarantine_samples_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[float]
    record_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text)
