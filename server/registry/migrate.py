"""Schema migrations, run in code: no alembic.ini at the repository root is needed."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on '%' in URL-encoded passwords.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def ensure_sqlite_dir(database_url: str) -> None:
    """SQLite does not create missing parent directories of its file."""
    prefix = "sqlite:///"
    if database_url.startswith(prefix) and ":memory:" not in database_url:
        Path(database_url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def migrate(database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision``; idempotent, safe on every start."""
    ensure_sqlite_dir(database_url)
    command.upgrade(alembic_config(database_url), revision)
    log.info("registry schema at %s", revision)
