"""Telemetry history and quarantine samples for the operator's dashboard.

Revision ID: 0004_telemetry
Revises: 0003_fleet_actions
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_telemetry"
down_revision: str | None = "0003_fleet_actions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "telemetry",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("ingested", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
        sa.Column("serving_version", sa.Integer(), nullable=True),
        sa.Column("scoring_latency_ms", sa.Double(), nullable=True),
        sa.Column("drift_score", sa.Double(), nullable=True),
        sa.Column("queue_depth", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry"),
    )
    op.create_index("ix_telemetry_device_at", "telemetry", ["device_id", "at"])
    op.create_table(
        "quarantine_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("record_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine_samples"),
    )
    op.create_index("ix_quarantine_samples_device_at", "quarantine_samples", ["device_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_samples_device_at", table_name="quarantine_samples")
    op.drop_table("quarantine_samples")
    op.drop_index("ix_telemetry_device_at", table_name="telemetry")
    op.drop_table("telemetry")
