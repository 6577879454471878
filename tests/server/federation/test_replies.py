"""Replies read in one pass, and train metrics averaged exactly as Flower's aggregate_metricrecords."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from server.federation.replies import average_train_metrics, split_records, weighted_metrics


def random_metrics(seed: int, replies: int) -> list[MetricRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(replies):
        values: dict[str, int | float | list[int] | list[float]] = {
            "num-examples": int(rng.integers(1, 5000)),
            "train-loss": float(rng.random()),
            "positives": int(rng.integers(0, 50)),  # an int metric: averaged into a float, as in Flower
            "per-class": [float(x) for x in rng.random(3)],
            "counts": [int(x) for x in rng.integers(0, 9, 2)],
            "compute-s": float(rng.random() * 3),
        }
        keys = list(values)
        rng.shuffle(keys)  # key order differs between replies
        records.append(MetricRecord({k: values[k] for k in keys}))
    return records


@pytest.mark.parametrize("seed", range(5))
def test_weighted_metrics_are_flowers_to_the_last_bit(seed: int) -> None:
    metrics = random_metrics(seed, replies=37)
    contents = [RecordDict({"metrics": m}) for m in metrics]
    want = aggregate_metricrecords(contents, "num-examples")
    got = weighted_metrics(metrics, "num-examples")
    assert dict(got.items()) == dict(want.items())  # == on floats: the same bits
    assert list(got.keys()) == list(want.keys())
    assert "num-examples" not in got


def test_lists_of_different_lengths_are_an_error_as_in_flower() -> None:
    metrics = [MetricRecord({"n": 1, "v": [1.0, 2.0]}), MetricRecord({"n": 1, "v": [1.0]})]
    with pytest.raises(ValueError, match="shorter"):
        aggregate_metricrecords([RecordDict({"m": m}) for m in metrics], "n")
    with pytest.raises(ValueError, match="shorter"):
        weighted_metrics(metrics, "n")


def test_split_records_keeps_each_kind_in_key_order() -> None:
    first, second = ArrayRecord([np.zeros(2, dtype=np.float32)]), ArrayRecord([np.ones(2, dtype=np.float32)])
    m = MetricRecord({"num-examples": 3})
    content = RecordDict({"b": first, "metrics": m, "config": ConfigRecord({"x": 1}), "a": second})
    arrays, metrics = split_records(content)
    assert arrays == [first, second]
    assert metrics == [m]


def test_a_strategys_own_metrics_aggregation_is_called_as_given() -> None:
    metrics = random_metrics(0, replies=3)
    contents = [RecordDict({"metrics": m}) for m in metrics]

    def count_replies(records: list[RecordDict], key: str) -> MetricRecord:
        return MetricRecord({"replies": len(records), "key-length": len(key)})

    got = average_train_metrics(count_replies, contents, metrics, "num-examples")
    assert got is not None
    assert dict(got.items()) == {"replies": 3, "key-length": len("num-examples")}
    default = average_train_metrics(aggregate_metricrecords, contents, metrics, "num-examples")
    assert default is not None
    assert dict(default.items()) == dict(aggregate_metricrecords(contents, "num-examples").items())
