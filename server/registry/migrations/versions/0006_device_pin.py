"""Devices report the version an operator's pin holds them at.

Revision ID: 0006_device_pin
Revises: 0005_strategy_drift
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_device_pin"
down_revision: str | None = "0005_strategy_drift"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: an unpinned device, and every row written before this revision.
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("pinned_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("pinned_version")
