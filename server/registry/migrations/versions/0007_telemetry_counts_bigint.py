"""Telemetry keeps an agent's cumulative counts in 64 bits.

A long-lived agent passes 2**31 ingested records (24 days at 1,000 records/s); on
PostgreSQL a 32-bit column then refused its telemetry points.

Revision ID: 0007_telemetry_counts_bigint
Revises: 0006_device_pin
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_telemetry_counts_bigint"
down_revision: str | None = "0006_device_pin"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = ("ingested", "quarantined", "scored")


def upgrade() -> None:
    with op.batch_alter_table("telemetry") as batch:
        for name in COUNTS:
            batch.alter_column(name, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("telemetry") as batch:
        for name in COUNTS:
            batch.alter_column(name, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
