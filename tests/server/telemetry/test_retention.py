"""The retention policy bounds the history and keeps average rates exact."""

from __future__ import annotations

import pytest

from server.telemetry.points import TelemetryPoint, rates
from server.telemetry.retention import RetentionPolicy, points_to_drop

POLICY = RetentionPolicy(raw_s=100.0, bucket_s=60.0, keep_s=1000.0, max_points=10_000)


def test_recent_points_are_all_kept() -> None:
    ats = [float(t) for t in range(900, 1000, 5)]
    assert points_to_drop(ats, 1000.0, POLICY) == []


def test_older_points_are_thinned_to_the_newest_of_each_bucket() -> None:
    ats = [float(t) for t in range(0, 1000, 5)]
    drop = set(points_to_drop(ats, 1000.0, POLICY))
    kept = [at for i, at in enumerate(ats) if i not in drop]
    old = [at for at in kept if 1000.0 - at > POLICY.raw_s]
    buckets = [int(at // POLICY.bucket_s) for at in old]
    assert len(buckets) == len(set(buckets))  # one point per bucket
    assert all(at % 60 == 55 for at in old)  # ... the newest one of it
    assert [at for at in kept if 1000.0 - at <= POLICY.raw_s] == [at for at in ats if at >= 900]


def test_points_past_keep_s_are_dropped() -> None:
    ats = [0.0, 10.0, 1500.0, 1990.0]
    assert points_to_drop(ats, 2000.0, POLICY) == [0, 1]


def test_max_points_drops_the_oldest() -> None:
    policy = RetentionPolicy(raw_s=1e6, bucket_s=60.0, keep_s=1e6, max_points=3)
    assert points_to_drop([1.0, 2.0, 3.0, 4.0, 5.0], 10.0, policy) == [0, 1]


def test_history_stays_bounded_under_a_steady_stream() -> None:
    """Thinning as the stream goes: the count stops growing however long it runs."""
    ats: list[float] = []
    sizes = []
    for step in range(2000):
        now = step * 5.0
        ats.append(now)
        if step % 50 == 0:
            drop = set(points_to_drop(ats, now, POLICY))
            ats = [a for i, a in enumerate(ats) if i not in drop]
        sizes.append(len(ats))
    bound = POLICY.raw_s / 5 + (POLICY.keep_s - POLICY.raw_s) / POLICY.bucket_s + 2 + 50
    assert max(sizes[1000:]) <= bound
    assert max(sizes[1000:]) == max(sizes[1500:])  # no growth in the second half


def test_thinning_keeps_the_average_rate_between_kept_points() -> None:
    points = [TelemetryPoint("d", float(t), t * 3 + (t // 7), t // 10, 0) for t in range(0, 1000, 5)]
    drop = set(points_to_drop([p.at for p in points], 1000.0, POLICY))
    kept = [p for i, p in enumerate(points) if i not in drop]
    assert len(kept) < len(points)
    start = kept[0]
    end = kept[-1]
    full = rates([p for p in points if start.at <= p.at <= end.at])
    thinned = rates(kept)
    assert thinned.records_per_s == pytest.approx(full.records_per_s)
    assert thinned.quarantine_rate == pytest.approx(full.quarantine_rate)


def test_invalid_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid retention"):
        RetentionPolicy(raw_s=10.0, keep_s=5.0)
