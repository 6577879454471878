"""FedAvg with update sanity checks and per-round bookkeeping.

Flower's FedAvg averages whatever comes back; one agent with no labelled data (zero
examples) or one diverged update (NaN/Inf, exploding norm) would poison or crash the
round. Those replies are dropped and counted as failures before Flower aggregates.

Flower's FedAvg also raises (ending the whole run) when replies differ in shape: several
ArrayRecords or MetricRecords, other array keys, other metric keys. A reply that does not
match the model sent, or whose metric keys differ from most replies', is dropped too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

log = logging.getLogger(__name__)


@dataclass
class RoundOutcome:
    server_round: int
    participants: int = 0
    failures: int = 0
    reasons: list[str] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


def _shapes(record: ArrayRecord) -> dict[str, tuple[int, ...]]:
    return {key: tuple(array.shape) for key, array in record.items()}


def reply_problem(msg: Message, max_norm: float, expected: ArrayRecord | None = None) -> str | None:
    """Why a train reply must not be aggregated, or None when it is sound.

    ``expected`` (the arrays sent to the nodes) makes a reply for another model a problem.
    """
    node = f"node {msg.metadata.src_node_id}"
    if msg.has_error():
        return f"{node}: error {msg.error.reason}"
    metrics = list(msg.content.metric_records.values())
    if len(metrics) != 1:
        return f"{node}: expected one MetricRecord, got {len(metrics)}"
    examples = metrics[0].get("num-examples", 0)
    if isinstance(examples, bool) or not isinstance(examples, int | float) or not np.isfinite(examples):
        return f"{node}: num-examples is not a finite number: {examples!r}"
    if examples <= 0:
        return f"{node}: no labelled examples"
    arrays = list(msg.content.array_records.values())
    if len(arrays) != 1:
        return f"{node}: expected one ArrayRecord, got {len(arrays)}"
    if expected is not None and _shapes(arrays[0]) != _shapes(expected):
        return f"{node}: arrays do not match the model sent (keys or shapes differ)"
    sq = 0.0
    for nd in arrays[0].to_numpy_ndarrays():
        if not np.all(np.isfinite(nd)):
            return f"{node}: non-finite values in update"
        sq += float(np.square(nd, dtype=np.float64).sum())
    if sq**0.5 > max_norm:
        return f"{node}: update norm {sq**0.5:.3g} above bound {max_norm:.3g}"
    return None


class SanitizedFedAvg(FedAvg):
    def __init__(
        self,
        *,
        min_nodes: int,
        max_update_norm: float = 1e4,
        on_round: Callable[[RoundOutcome], None] | None = None,
        fraction_evaluate: float = 0.0,
    ) -> None:
        # fraction_evaluate 0: the server evaluates on its holdout, no second exchange per round.
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        self.max_update_norm = max_update_norm
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
        checked = [(msg, reply_problem(msg, self.max_update_norm, expected)) for msg in replies]
        # Flower refuses replies whose metric keys differ: keep the most common key set.
        key_sets = [frozenset(next(iter(m.content.metric_records.values())).keys()) for m, p in checked if p is None]
        common = Counter(key_sets).most_common(1)[0][0] if key_sets else frozenset()
        sound: list[Message] = []
        for msg, problem in checked:
            if problem is None and frozenset(next(iter(msg.content.metric_records.values())).keys()) != common:
                problem = f"node {msg.metadata.src_node_id}: metric keys differ from the other replies'"
            if problem is None:
                sound.append(msg)
            else:
                outcome.failures += 1
                outcome.reasons.append(problem)
                log.warning("round %d: dropped reply: %s", server_round, problem)
        outcome.participants = len(sound)
        arrays, metrics = super().aggregate_train(server_round, sound) if sound else (None, None)
        if metrics is not None:
            outcome.train_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        # The round waits for the slowest agent: its training time is the round's compute.
        compute = [_metric(msg, "compute-s") for msg in sound]
        if any(c is not None for c in compute):
            outcome.train_metrics["compute-s-max"] = max(c for c in compute if c is not None)
        return arrays, metrics


def _metric(msg: Message, key: str) -> float | None:
    value = next(iter(msg.content.metric_records.values())).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
