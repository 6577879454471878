"""Fixtures of the server tests: synthetic fraud frames, a signing key, registries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.signing import generate_private_key
from shared.tasks.fraud import FEATURES, LABEL, PCA_COLUMNS


def synthetic_frame(n: int = 2000, positive_rate: float = 0.04, seed: int = 0) -> pd.DataFrame:
    """Normal features; positives are shifted along a few components, so the task is learnable."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive_rate).astype(np.int64)
    x = rng.normal(size=(n, len(PCA_COLUMNS)))
    x[:, :4] += 2.5 * y[:, None]
    amount = rng.lognormal(mean=3.0, sigma=1.0, size=n) * (1 + 2 * y)
    frame = pd.DataFrame(x, columns=list(PCA_COLUMNS))
    frame["Amount"] = amount
    frame[LABEL] = y
    frame["record_id"] = [f"r{seed}-{i}" for i in range(n)]
    assert list(frame.columns[: len(FEATURES)]) == list(FEATURES)
    return frame


@pytest.fixture(scope="session")
def bootstrap_df() -> pd.DataFrame:
    return synthetic_frame(2000, seed=1)


@pytest.fixture(scope="session")
def holdout_df() -> pd.DataFrame:
    return synthetic_frame(1000, seed=2)


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return generate_private_key()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'registry.db'}"


REGISTRY_TABLES = (
    "devices",
    "model_versions",
    "training_runs",
    "rounds",
    "audit_log",
    "users",
    "api_tokens",
    "sessions",
    "fleet_commands",
    "command_acks",
    "telemetry",
    "quarantine_samples",
)


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    from server.registry.migrate import migrate

    migrate(postgres_url)
    return postgres_url


@pytest.fixture
def clean_postgres(migrated_postgres: str) -> str:
    """The session's PostgreSQL database, emptied before each test."""
    import sqlalchemy as sa

    engine = sa.create_engine(migrated_postgres)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(REGISTRY_TABLES)} RESTART IDENTITY"))
    engine.dispose()
    return migrated_postgres
