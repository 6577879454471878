"""FedAvg with update sanity checks and per-round bookkeeping.

Flower's FedAvg averages whatever comes back; one agent with no labelled data (zero
examples) or one diverged update (NaN/Inf, exploding norm) would poison or crash the
round. Those replies are dropped and counted as failures before Flower aggregates.

Flower's FedAvg also raises (ending the whole run) when replies differ in shape: several
ArrayRecords or MetricRecords, other array keys, other metric keys, a list metric where
the others sent a number. A reply that does not match the model sent, or whose metric keys
or value forms differ from most replies', is dropped too. So is one with a NaN/Inf metric
(the round's record could not be stored) or an example count no dataset has (two of them
would overflow the weights' sum and zero the model).

The arrays are averaged by fedforge's kernels (``server.aggregation``, through
``server.federation.aggregate``), not by Flower's ``aggregate_arrayrecords``: the bytes are
read in place, once, and the same pass yields each update's norm, so checking for NaN/Inf
and exploding norms costs no extra pass (benchmarks/bench_aggregation.py, figure 4).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, Message, MetricRecord

from server.aggregation.fedavg import MAX_WEIGHT, Averaged, screen
from server.errors import AggregationError
from server.federation.aggregate import record_views, screened_average, to_record
from server.federation.replies import (
    MetricShape,
    average_train_metrics,
    is_finite,
    metric_problem,
    metric_shape,
    split_records,
)
from server.federation.sampling import DEFAULT_NODE_WAIT_S, BoundedFedAvg

log = logging.getLogger(__name__)
T = TypeVar("T")


def _most_common(items: list[T]) -> T | None:
    return Counter(items).most_common(1)[0][0] if items else None


@dataclass
class RoundOutcome:
    server_round: int
    participants: int = 0
    failures: int = 0
    reasons: list[str] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


Layout = tuple[tuple[str, tuple[int, ...], str], ...]


def _layout(record: ArrayRecord) -> Layout:
    return tuple((key, tuple(array.shape), str(array.dtype)) for key, array in record.items())


@dataclass(frozen=True)
class ParsedReply:
    """A train reply whose form is sound, taken apart once (Flower rebuilds its record views per access)."""

    msg: Message
    metrics: MetricRecord
    arrays: ArrayRecord
    views: list[npt.NDArray[np.generic]]
    weight: float
    layout: Layout

    @property
    def node(self) -> str:
        return f"node {self.msg.metadata.src_node_id}"


def parse_reply(msg: Message, expected: ArrayRecord | None = None) -> ParsedReply | str:
    """The reply taken apart, or what is wrong with its form (error, metrics, weight, arrays' layout).

    Values are not read here (that is the aggregation pass's job). ``expected`` (the arrays
    sent to the nodes) makes a reply for another model a problem.
    """
    node = f"node {msg.metadata.src_node_id}"
    if msg.has_error():
        return f"{node}: error {msg.error.reason}"
    arrays, metrics = split_records(msg.content)
    if len(metrics) != 1:
        return f"{node}: expected one MetricRecord, got {len(metrics)}"
    examples = metrics[0].get("num-examples", 0)
    if isinstance(examples, bool) or not isinstance(examples, int | float) or not is_finite(examples):
        return f"{node}: num-examples is not a finite number: {examples!r}"
    if examples <= 0:
        return f"{node}: no labelled examples"
    if examples > MAX_WEIGHT:
        # Two such weights would sum to Inf, every factor would be 0 and the model all zeros.
        return f"{node}: num-examples {examples:.3g} is beyond any real dataset (at most 2**53)"
    problem = metric_problem(metrics[0])
    if problem is not None:
        return f"{node}: {problem}"
    if len(arrays) != 1:
        return f"{node}: expected one ArrayRecord, got {len(arrays)}"
    layout = _layout(arrays[0])
    if expected is not None and [(k, s) for k, s, _ in layout] != [(k, s) for k, s, _ in _layout(expected)]:
        return f"{node}: arrays do not match the model sent (keys or shapes differ)"
    try:
        views = record_views(arrays[0])
    except AggregationError as exc:
        return f"{node}: undecodable arrays: {exc}"
    if [(tuple(v.shape), _dtype_name(v.dtype)) for v in views] != [(s, d) for _, s, d in layout]:
        return f"{node}: array bytes do not match their declared shapes or dtypes"
    if expected is not None and layout != _layout(expected):
        return f"{node}: arrays do not match the model sent (dtypes differ)"
    return ParsedReply(msg, metrics[0], arrays[0], views, float(examples), layout)


def usual_metric_shape(metrics: list[MetricRecord]) -> MetricShape | None:
    """The metrics' form most replies share: among the most common key set, the most common shape.

    The key set comes first so that a reply with other keys is reported as such, not as a
    shape mismatch; ties go to the earliest reply.
    """
    common_keys = _most_common([frozenset(m.keys()) for m in metrics])
    return _most_common([metric_shape(m) for m in metrics if frozenset(m.keys()) == common_keys])


def metric_mismatch(metrics: MetricRecord, usual: MetricShape | None) -> str | None:
    """Why a reply's metrics cannot be averaged with the others' (``usual_metric_shape``), or None."""
    shape = metric_shape(metrics)
    if shape == usual:
        return None
    if usual is None or frozenset(metrics.keys()) != frozenset(key for key, _ in usual):
        return "metric keys differ from the other replies'"
    usual_lengths = dict(usual)
    differing = sorted(key for key, length in shape if usual_lengths[key] != length)
    return f"metric values differ in form (number or list length) from the other replies': {', '.join(differing)}"


def check_reply(msg: Message, max_norm: float, expected: ArrayRecord | None = None) -> ParsedReply | str:
    """The sound reply taken apart (its arrays as zero-copy views), or why it must not be aggregated."""
    parsed = parse_reply(msg, expected)
    if isinstance(parsed, str):
        return parsed
    _, problems = screen([parsed.views], [parsed.weight], max_norm=max_norm)
    return f"{parsed.node}: {problems[0]}" if problems else parsed


def reply_problem(msg: Message, max_norm: float, expected: ArrayRecord | None = None) -> str | None:
    """Why one train reply must not be aggregated, or None when it is sound (form and values)."""
    checked = check_reply(msg, max_norm, expected)
    return checked if isinstance(checked, str) else None


class SanitizedFedAvg(BoundedFedAvg):
    def __init__(
        self,
        *,
        min_nodes: int,
        max_update_norm: float = 1e4,
        device: str = "cpu",
        exact: bool = False,
        on_round: Callable[[RoundOutcome], None] | None = None,
        fraction_evaluate: float = 0.0,
        node_wait_s: float = DEFAULT_NODE_WAIT_S,
    ) -> None:
        # fraction_evaluate 0: the server evaluates on its holdout, no second exchange per round.
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        self.node_wait_s = node_wait_s  # a round waits at most this long for its SuperNodes
        self.max_update_norm = max_update_norm
        self.device = device  # "auto" lets aggregation use a GPU when there is one
        self.exact = exact  # Flower's arithmetic bit for bit: the CPU kernel, never the GPU
        self.on_round = on_round
        self.outcomes: dict[int, RoundOutcome] = {}
        self._sent: dict[int, ArrayRecord] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid):  # type: ignore[no-untyped-def]
        self.outcomes[server_round] = RoundOutcome(server_round)
        self._sent = {server_round: arrays}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        outcome = self.outcomes.setdefault(server_round, RoundOutcome(server_round))
        expected = self._sent.get(server_round)
        parsed: list[ParsedReply] = []
        for msg in replies:
            reply = parse_reply(msg, expected)
            if isinstance(reply, str):
                self._drop(outcome, reply)
            else:
                parsed.append(reply)
        # Flower refuses replies whose metric keys differ, and its averaging raises on values
        # of another form: keep the most common metrics; and without the model sent to
        # compare with, the most common array layout is the model.
        usual_metrics = usual_metric_shape([r.metrics for r in parsed])
        usual_layout = _most_common([r.layout for r in parsed])
        candidates: list[ParsedReply] = []
        for reply in parsed:
            mismatch = metric_mismatch(reply.metrics, usual_metrics)
            if mismatch is not None:
                self._drop(outcome, f"{reply.node}: {mismatch}")
            elif reply.layout != usual_layout:
                self._drop(outcome, f"{reply.node}: arrays differ from the other replies' (keys, shapes or dtypes)")
            else:
                candidates.append(reply)
        averaged, problems = self._average(candidates)
        for i, problem in sorted(problems.items()):
            self._drop(outcome, f"{candidates[i].node}: {problem}")
        sound = [reply for i, reply in enumerate(candidates) if i not in problems]
        outcome.participants = len(sound)
        if averaged is None or not sound:
            return None, None
        arrays = to_record([key for key, _, _ in sound[0].layout], averaged.arrays)
        metrics = average_train_metrics(
            self.train_metrics_aggr_fn,
            [reply.msg.content for reply in sound],
            [reply.metrics for reply in sound],
            self.weighted_by_key,
        )
        if metrics is not None:
            outcome.train_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        # The round waits for the slowest agent: its training time is the round's compute.
        compute = [_metric(reply.metrics, "compute-s") for reply in sound]
        if any(c is not None for c in compute):
            outcome.train_metrics["compute-s-max"] = max(c for c in compute if c is not None)
        return arrays, metrics

    def _average(self, candidates: list[ParsedReply]) -> tuple[Averaged | None, dict[int, str]]:
        if not candidates:
            return None, {}
        return screened_average(
            [r.views for r in candidates],
            [r.weight for r in candidates],
            max_norm=self.max_update_norm,
            device=self.device,
            exact=self.exact,
        )

    @staticmethod
    def _drop(outcome: RoundOutcome, problem: str) -> None:
        outcome.failures += 1
        outcome.reasons.append(problem)
        log.warning("round %d: dropped reply: %s", outcome.server_round, problem)


@functools.lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype[np.generic]) -> str:
    """``str(dtype)``, cached: NumPy builds the name anew each time, for every array of every reply."""
    return str(dtype)


def _metric(metrics: MetricRecord, key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
