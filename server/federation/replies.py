"""Reading train replies without Flower's per-access rebuilds: their records, and the weighted metrics.

Flower's ``RecordDict.array_records`` and ``.metric_records`` build a new synced, type-checked
dict on every access, and its ``aggregate_metricrecords`` reads ``metric_records`` twice per
reply and type-checks the running sums on every addition. In a round of 100 replies that was
3.6 ms for the metrics alone (and as much again to find the records), next to a 17 ms FedAvg.
Here each reply's records are found in one pass over its content, and the metrics are
averaged in plain Python floats, then put into one ``MetricRecord``: the same arithmetic in
the same order, so the same result as Flower's.

Flower's averaging also assumes every reply's metrics have the same form: a list where
another reply sent a number, or a list of another length, raises a ``TypeError`` or
``ValueError`` that ends the whole run. ``metric_shape`` and ``metric_problem`` let the
strategies drop such a reply (and one with NaN/Inf metrics, which no registry can store)
instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

MetricValue = int | float | list[int] | list[float]
MetricsAggregation = Callable[[list[RecordDict], str], MetricRecord]
# Per metric key: None for a number, the length for a list (what averaging replies needs alike).
MetricShape = frozenset[tuple[str, int | None]]


def metric_shape(metrics: MetricRecord) -> MetricShape:
    """The form of a reply's metrics: replies are averaged together only when theirs are equal."""
    return frozenset((key, len(value) if isinstance(value, list) else None) for key, value in metrics.items())


def metric_problem(metrics: MetricRecord) -> str | None:
    """Why a reply's metrics must not be averaged (a NaN/Inf value), or None.

    One NaN loss would make the round's averaged metric NaN, which the registry cannot
    store (PostgreSQL refuses it in JSON), so the round, and with it the run, would fail.
    """
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(is_finite(v) for v in values):
            return f"metric {key!r} is not finite: {_short(value)}"
    return None


def is_finite(value: float) -> bool:
    """``math.isfinite``, false (not an ``OverflowError``) for an int too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def split_records(content: RecordDict) -> tuple[list[ArrayRecord], list[MetricRecord]]:
    """The content's ArrayRecords and MetricRecords, in key order."""
    arrays: list[ArrayRecord] = []
    metrics: list[MetricRecord] = []
    for record in content.values():
        if isinstance(record, ArrayRecord):
            arrays.append(record)
        elif isinstance(record, MetricRecord):
            metrics.append(record)
    return arrays, metrics


def weighted_metrics(metrics: Sequence[MetricRecord], weighting_key: str) -> MetricRecord:
    """Flower's ``aggregate_metricrecords`` on one MetricRecord per reply, already taken apart.

    Every metric but ``weighting_key`` is averaged with the weights ``w / sum(w)``, in reply
    order, element-wise for lists; the weighting key itself is left out, as in Flower.
    """
    weights = [cast(float, record[weighting_key]) for record in metrics]
    total = sum(weights)
    sums: dict[str, MetricValue] = {}
    for record, weight in zip(metrics, weights, strict=True):
        factor = weight / total
        for key, value in record.items():
            if key == weighting_key:
                continue
            current = sums.get(key)
            if current is None:
                sums[key] = [v * factor for v in value] if isinstance(value, list) else value * factor
            elif isinstance(value, list):
                sums[key] = [c + v * factor for c, v in zip(cast(list[float], current), value, strict=True)]
            else:
                sums[key] = cast(float, current) + value * factor
    return MetricRecord(sums)


def average_train_metrics(
    aggregate: MetricsAggregation, contents: list[RecordDict], metrics: Sequence[MetricRecord], weighting_key: str
) -> MetricRecord | None:
    """The strategy's metrics aggregation: Flower's default computed here, a user's own called as given."""
    if aggregate is aggregate_metricrecords:
        return weighted_metrics(metrics, weighting_key)
    return aggregate(contents, weighting_key)
