"""The Alembic history produces exactly the schema the ORM models describe."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.registry.migrate import migrate
from server.registry.models import Base


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_migration_matches_models_and_is_idempotent(sqlite_url: str) -> None:
    migrate(sqlite_url)
    migrate(sqlite_url)
    assert _diff(sqlite_url) == []


@pytest.mark.integration
def test_postgres_migration_matches_models(migrated_postgres: str) -> None:
    migrate(migrated_postgres)
    assert _diff(migrated_postgres) == []


def test_sqlite_downgrade_to_empty_and_up_again(sqlite_url: str) -> None:
    """Every revision's downgrade works, so a bad release can be backed out."""
    from alembic import command

    from server.registry.migrate import alembic_config

    migrate(sqlite_url)
    command.downgrade(alembic_config(sqlite_url), "base")
    engine = sa.create_engine(sqlite_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    migrate(sqlite_url)
    assert _diff(sqlite_url) == []


def test_sqlite_upgrade_copies_the_device_of_earlier_commands_out_of_their_payload(sqlite_url: str) -> None:
    """0008: pins, unpins and configs written before it are found by device afterwards."""
    from server.registry.sql import SqlRegistry

    migrate(sqlite_url, "0007_telemetry_counts_bigint")
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            for cid, kind, payload in (
                ("pin-1", "pin", '{"device_id": "edge-a", "version": 1}'),
                ("cfg-1", "config", '{"device_id": "edge-b", "settings": {}}'),
                ("rb-1", "rollback", '{"version": 1}'),
            ):
                conn.execute(
                    sa.text(
                        "INSERT INTO fleet_commands (command_id, fleet, task, kind, version, issued_at, expires_at,"
                        " issued_by, payload) VALUES (:c, 'f', 'fraud', :k, NULL, 1.0, 2.0, 'ops', :p)"
                    ),
                    {"c": cid, "k": kind, "p": payload},
                )
    finally:
        engine.dispose()
    migrate(sqlite_url)
    assert _diff(sqlite_url) == []
    registry = SqlRegistry(sqlite_url)
    try:
        assert [c.command_id for c in registry.list_commands("f", device_id="edge-a")] == ["pin-1"]
        assert [c.command_id for c in registry.list_commands("f", kind="config", device_id="edge-b")] == ["cfg-1"]
        assert registry.list_commands("f", kind="rollback")[0].device_id is None
    finally:
        registry.close()
