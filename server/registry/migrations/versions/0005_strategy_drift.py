"""Training runs record their aggregation strategy; telemetry keeps the feature that drifted most.

Revision ID: 0005_strategy_drift
Revises: 0004_telemetry
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_strategy_drift"
down_revision: str | None = "0004_telemetry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows written before this revision did not keep these.
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("strategy", sa.String(32), nullable=True))
    with op.batch_alter_table("telemetry") as batch:
        batch.add_column(sa.Column("drift_feature", sa.String(128), nullable=True))
        batch.add_column(sa.Column("drift_shift", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetry") as batch:
        batch.drop_column("drift_shift")
        batch.drop_column("drift_feature")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("strategy")
