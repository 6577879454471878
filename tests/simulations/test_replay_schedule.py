"""The replay schedule: time order, batching, label lag; no broker needed."""

from __future__ import annotations

import pytest

from shared.errors import DatasetError
from simulations.replay import Event, schedule


def test_batches_are_paced_by_rate_and_labels_lag() -> None:
    events = list(schedule({"d1": 25}, rate=10.0, batch=10, label_delay=1.5))
    ingest = [(e.at, e.start, e.stop) for e in events if e.kind == "ingest"]
    labels = [(e.at, e.start, e.stop) for e in events if e.kind == "labels"]
    assert ingest == [(0.0, 0, 10), (1.0, 10, 20), (2.0, 20, 25)]
    assert labels == [(1.5, 0, 10), (2.5, 10, 20), (3.5, 20, 25)]
    assert [e.at for e in events] == sorted(e.at for e in events)


def test_labels_never_precede_their_records() -> None:
    events = list(schedule({"a": 7, "b": 30, "c": 0}, rate=0.0, batch=4, label_delay=0.0))
    sent: set[tuple[str, int]] = set()
    for e in events:
        if e.kind == "ingest":
            sent.add((e.device, e.start))
        else:
            assert (e.device, e.start) in sent
    assert sum(e.stop - e.start for e in events if e.kind == "ingest") == 37
    assert sum(e.stop - e.start for e in events if e.kind == "labels") == 37


def test_devices_interleave_in_time() -> None:
    events = list(schedule({"a": 20, "b": 20}, rate=5.0, batch=5, label_delay=None))
    assert all(e.kind == "ingest" for e in events)
    assert [(e.at, e.device) for e in events] == [
        (0.0, "a"),
        (0.0, "b"),
        (1.0, "a"),
        (1.0, "b"),
        (2.0, "a"),
        (2.0, "b"),
        (3.0, "a"),
        (3.0, "b"),
    ]


def test_events_order_by_time_then_sequence() -> None:
    early = Event(1.0, (5, 0), "d", "labels", 0, 1)
    late = Event(2.0, (0, 0), "d", "ingest", 1, 2)
    assert sorted([late, early]) == [early, late]


def test_batch_must_be_positive() -> None:
    with pytest.raises(DatasetError):
        list(schedule({"d": 3}, rate=1.0, batch=0, label_delay=0.0))
