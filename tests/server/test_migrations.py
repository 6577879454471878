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
