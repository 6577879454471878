"""The TelemetryStore contract, run against every implementation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.registry.telemetry import QUARANTINE_KEEP, InMemoryTelemetryStore, TelemetryStore
from server.telemetry.ingest import record_status
from server.telemetry.points import QuarantineEntry, TelemetryPoint
from server.telemetry.retention import RetentionPolicy
from shared.schemas import Counters, DeviceStatus, QuarantineSample

POLICY = RetentionPolicy(raw_s=100.0, bucket_s=60.0, keep_s=1000.0, max_points=10_000)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> Iterator[TelemetryStore]:
    if request.param == "memory":
        yield InMemoryTelemetryStore(POLICY, prune_every=10_000)
        return
    from server.registry.migrate import migrate
    from server.registry.sql import make_engine
    from server.registry.telemetry_sql import SqlTelemetryStore

    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "clean_postgres")
    migrate(url)
    engine = make_engine(url)
    yield SqlTelemetryStore(engine, POLICY, prune_every=10_000)
    engine.dispose()


def _point(device: str, at: float, ingested: int = 0) -> TelemetryPoint:
    return TelemetryPoint(
        device, at, ingested, 0, ingested, serving_version=1, drift_score=0.5, drift_feature="V3", drift_shift=1.5
    )


def test_points_come_back_in_time_order(store: TelemetryStore) -> None:
    for at in (30.0, 10.0, 20.0):
        store.add_point(_point("d1", at, int(at)))
    store.add_point(_point("d2", 15.0))
    assert [p.at for p in store.list_points("d1")] == [10.0, 20.0, 30.0]
    assert [p.at for p in store.list_points("d1", since=20.0)] == [20.0, 30.0]
    assert [p.at for p in store.latest_points("d1", 2)] == [20.0, 30.0]
    assert store.latest_points("d1", 0) == []
    many = store.latest_points_many(["d1", "d2", "nobody"], 2)
    assert many == {"d1": store.latest_points("d1", 2), "d2": store.latest_points("d2", 2), "nobody": []}
    assert store.latest_points_many(["d1"], 0) == {"d1": []}
    assert store.list_points("nobody") == []
    assert store.list_points("d1")[0] == _point("d1", 10.0, 10)


def test_prune_applies_the_retention_policy(store: TelemetryStore) -> None:
    for at in range(0, 1000, 5):
        store.add_point(_point("d1", float(at), at))
    store.add_point(_point("d2", 0.0))
    dropped = store.prune("d1", now=1000.0)
    kept = store.list_points("d1")
    assert dropped > 0
    assert len(kept) == 200 - dropped
    assert all(1000.0 - p.at <= POLICY.keep_s for p in kept)
    assert len(store.list_points("d2")) == 1  # another device is untouched


def test_pruning_happens_by_itself_every_n_inserts() -> None:
    store = InMemoryTelemetryStore(RetentionPolicy(raw_s=1.0, bucket_s=1.0, keep_s=1.0, max_points=5), prune_every=4)
    for at in range(12):
        store.add_point(_point("d1", float(at)))
    assert len(store.list_points("d1")) <= 5 + 3


def test_quarantine_samples_are_deduplicated_and_capped(store: TelemetryStore) -> None:
    first = [QuarantineEntry("d1", float(i), f"r{i}", "bad value", "{...") for i in range(5)]
    assert store.add_quarantine(first) == 5
    assert store.add_quarantine(first[3:]) == 0  # statuses repeat the newest samples
    many = [QuarantineEntry("d1", 100.0 + i, None, f"reason {i}", "") for i in range(QUARANTINE_KEEP + 7)]
    store.add_quarantine(many)
    listed = store.list_quarantine("d1")
    assert len(listed) == QUARANTINE_KEEP
    assert listed[0].reason == f"reason {QUARANTINE_KEEP + 6}"  # newest first
    assert store.list_quarantine("d1", limit=3) == listed[:3]
    assert store.list_quarantine("d2") == []


def test_record_status_skips_replayed_retained_statuses(store: TelemetryStore) -> None:
    def status(ts: float, ingested: int) -> DeviceStatus:
        return DeviceStatus(
            device_id="d1",
            fleet="f",
            kind="heartbeat",
            ts=ts,
            counters=Counters(ingested=ingested),
            recent_quarantine=(QuarantineSample(at=ts, record_id="x", reason="why", excerpt="{"),),
        )

    assert record_status(store, status(100.0, 5), received_at=100.5, retained=False)
    assert record_status(store, status(105.0, 9), received_at=105.2, retained=False)
    # The broker replays the last retained status when the server resubscribes.
    assert not record_status(store, status(105.0, 9), received_at=500.0, retained=True)
    assert [p.ingested for p in store.list_points("d1")] == [5, 9]
    assert len(store.list_quarantine("d1")) == 2
