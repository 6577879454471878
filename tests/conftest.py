"""Fixtures that start real services on free loopback ports and always reap them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from simulations.mosquitto import MosquittoError, PrivateMosquitto, private_mosquitto

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

POSTGRES_ADMIN_URL = os.environ.get("FEDFORGE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


Mosquitto = PrivateMosquitto


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free port: no queue limits, so no message is dropped silently."""
    try:
        with private_mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
            yield broker
    except MosquittoError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the running PostgreSQL, dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    name = f"fedforge_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
