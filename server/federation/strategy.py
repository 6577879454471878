"""FedAvg with update sanity checks and per-round bookkeeping.

Flower's FedAvg averages whatever comes back; one agent with no labelled data (zero
examples) or one diverged update (NaN/Inf, exploding norm) would poison or crash the
round. Those replies are dropped and counted as failures before Flower aggregates.
"""

from __future__ import annotations

import logging
import time
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


def reply_problem(msg: Message, max_norm: float) -> str | None:
    """Why a train reply must not be aggregated, or None when it is sound."""
    if msg.has_error():
        return f"node {msg.metadata.src_node_id}: error {msg.error.reason}"
    metrics = list(msg.content.metric_records.values())
    if not metrics or float(metrics[0].get("num-examples", 0)) <= 0:  # type: ignore[arg-type]
        return f"node {msg.metadata.src_node_id}: no labelled examples"
    arrays = list(msg.content.array_records.values())
    if len(arrays) != 1:
        return f"node {msg.metadata.src_node_id}: expected one ArrayRecord"
    sq = 0.0
    for nd in arrays[0].to_numpy_ndarrays():
        if not np.all(np.isfinite(nd)):
            return f"node {msg.metadata.src_node_id}: non-finite values in update"
        sq += float(np.square(nd, dtype=np.float64).sum())
    if sq**0.5 > max_norm:
        return f"node {msg.metadata.src_node_id}: update norm {sq**0.5:.3g} above bound {max_norm:.3g}"
    return None


class SanitizedFedAvg(FedAvg):
    def __init__(
        self,
        *,
        min_nodes: int,
        max_update_norm: float = 1e4,
        on_round: Callable[[RoundOutcome], None] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        self.max_update_norm = max_update_norm
        self.on_round = on_round
        self.outcomes: dict[int, RoundOutcome] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid):  # type: ignore[no-untyped-def]
        self.outcomes[server_round] = RoundOutcome(server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        outcome = self.outcomes.setdefault(server_round, RoundOutcome(server_round))
        sound: list[Message] = []
        for msg in replies:
            problem = reply_problem(msg, self.max_update_norm)
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
        return arrays, metrics
