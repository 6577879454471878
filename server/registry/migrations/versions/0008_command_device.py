"""A device's own commands (pin, unpin, config) name it in a column, so its page finds them.

Until now the device sat only inside the JSON payload: a view of one device's remote
settings would have scanned every command. The backfill copies it out of the payload of
every earlier row.

Revision ID: 0008_command_device
Revises: 0007_telemetry_counts_bigint
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_command_device"
down_revision: str | None = "0007_telemetry_counts_bigint"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

commands = sa.table(
    "fleet_commands",
    sa.column("command_id", sa.String),
    sa.column("payload", sa.JSON),
    sa.column("device_id", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("fleet_commands") as batch:
        batch.add_column(sa.Column("device_id", sa.String(length=128), nullable=True))
        batch.create_index("ix_fleet_commands_device_id", ["device_id"])
    conn = op.get_bind()
    rows = conn.execute(sa.select(commands.c.command_id, commands.c.payload)).all()
    for command_id, payload in rows:
        device = payload.get("device_id") if isinstance(payload, dict) else None
        if isinstance(device, str):
            conn.execute(commands.update().where(commands.c.command_id == command_id).values(device_id=device[:128]))


def downgrade() -> None:
    with op.batch_alter_table("fleet_commands") as batch:
        batch.drop_index("ix_fleet_commands_device_id")
        batch.drop_column("device_id")
