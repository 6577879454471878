"""Initial registry schema: devices, model versions, training runs, rounds, audit log.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("fleet", sa.String(64), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("serving_version", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("counters", sa.JSON(), nullable=False),
        sa.Column("signature_verified", sa.Boolean(), nullable=False),
        sa.Column("last_rejection", sa.JSON(), nullable=True),
        sa.Column("queue_depth", sa.Integer(), nullable=False),
        sa.Column("scoring_latency_ms_p50", sa.Double(), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name="pk_devices"),
    )
    op.create_index("ix_devices_fleet", "devices", ["fleet"])
    op.create_table(
        "model_versions",
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("training_run_id", sa.String(128), nullable=True),
        sa.Column("created", sa.Double(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("signer", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.CheckConstraint("stage IN ('candidate', 'published', 'rejected')", name="ck_model_versions_stage"),
        sa.PrimaryKeyConstraint("task", "version", name="pk_model_versions"),
    )
    op.create_table(
        "training_runs",
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("flower_run_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("started", sa.Double(), nullable=False),
        sa.Column("finished", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("published_version", sa.Integer(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="ck_training_runs_status"),
        sa.PrimaryKeyConstraint("run_id", name="pk_training_runs"),
    )
    op.create_table(
        "rounds",
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("round", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("participants", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("duration_s", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "round", name="pk_rounds"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("rounds")
    op.drop_table("training_runs")
    op.drop_table("model_versions")
    op.drop_index("ix_devices_fleet", table_name="devices")
    op.drop_table("devices")
