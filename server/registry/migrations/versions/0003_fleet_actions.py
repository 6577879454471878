"""Fleet actions: withdrawn model stage, revoked devices, fleet commands and their acks.

Revision ID: 0003_fleet_actions
Revises: 0002_auth
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_fleet_actions"
down_revision: str | None = "0002_auth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STAGES = "stage IN ('candidate', 'published', 'rejected')"
NEW_STAGES = "stage IN ('candidate', 'published', 'rejected', 'withdrawn')"


def upgrade() -> None:
    # batch mode: SQLite cannot alter a CHECK constraint or add a NOT NULL column in place.
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint("ck_model_versions_stage", type_="check")
        batch.create_check_constraint("ck_model_versions_stage", NEW_STAGES)
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "fleet_commands",
        sa.Column("command_id", sa.String(128), nullable=False),
        sa.Column("fleet", sa.String(64), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("issued_by", sa.String(128), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("command_id", name="pk_fleet_commands"),
    )
    op.create_index("ix_fleet_commands_fleet", "fleet_commands", ["fleet"])
    op.create_table(
        "command_acks",
        sa.Column("command_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("serving_version", sa.Integer(), nullable=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("command_id", "device_id", name="pk_command_acks"),
    )


def downgrade() -> None:
    op.drop_table("command_acks")
    op.drop_index("ix_fleet_commands_fleet", table_name="fleet_commands")
    op.drop_table("fleet_commands")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("revoked")
    op.execute("UPDATE model_versions SET stage = 'rejected' WHERE stage = 'withdrawn'")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint("ck_model_versions_stage", type_="check")
        batch.create_check_constraint("ck_model_versions_stage", OLD_STAGES)
