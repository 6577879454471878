"""Training runs record their aggregation strategy.

Revision ID: 0005_run_strategy
Revises: 0004_telemetry
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_run_strategy"
down_revision: str | None = "0004_telemetry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: runs recorded before this revision did not keep their strategy.
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("strategy", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("strategy")
