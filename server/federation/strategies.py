"""The strategy catalog: every aggregation rule fedforge offers, chosen by name.

All of them share the sanitization of ``SanitizedFedAvg`` (error replies, zero or absurd
example counts, NaN/Inf in updates or metrics, exploding norms and mismatched shapes of
arrays or metrics are dropped and counted) and its per-round
bookkeeping; they differ in how the sound updates become the next model:

- ``fedavg``: mean weighted by examples; ``fedprox``: the same mean, and the clients add
  the proximal term ``proximal_mu`` to their local objective (sent in the train config);
- ``median``: coordinate-wise median; ``trimmed-mean``: coordinate-wise mean without the
  ``trim_beta`` share of extremes at each end;
- ``krum`` / ``multi-krum``: the update(s) closest to their ``n - f - 2`` nearest others,
  with ``f`` the number of Byzantine clients the rule must survive.

The kernels are vectorized numpy in ``server.aggregation.robust``. A host (the digital
twin) may pass ``reply_filter`` to see every reply before sanitization.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from server.aggregation import robust
from server.errors import ServerError
from server.federation.catalog import STRATEGY_NAMES
from server.federation.replies import average_train_metrics, split_records
from server.federation.sampling import DEFAULT_NODE_WAIT_S, BoundedFedAvg
from server.federation.strategy import RoundOutcome, check_reply, metric_mismatch, usual_metric_shape

log = logging.getLogger(__name__)


ReplyFilter = Callable[[int, list[Message]], list[Message]]


@dataclass(frozen=True)
class StrategyParams:
    proximal_mu: float = 0.01  # fedprox
    trim_beta: float = 0.1  # trimmed-mean: share cut at each end
    byzantine: int = 0  # krum / multi-krum: f, the Byzantine clients to survive
    keep: int = 0  # multi-krum: updates averaged (0: n - f)


class CatalogStrategy(BoundedFedAvg):
    """One of the catalog's rules, sanitized, with the bookkeeping the ServerApp records."""

    def __init__(
        self,
        name: str,
        *,
        min_nodes: int,
        params: StrategyParams | None = None,
        fraction_train: float = 1.0,
        max_update_norm: float = 1e4,
        reply_filter: ReplyFilter | None = None,
        node_wait_s: float = DEFAULT_NODE_WAIT_S,
    ) -> None:
        if name not in STRATEGY_NAMES:
            raise ServerError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}")
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=min_nodes,
            min_available_nodes=min_nodes,
        )
        self.name = name
        self.node_wait_s = node_wait_s  # a round waits at most this long for its SuperNodes
        self.params = params or StrategyParams()
        self.max_update_norm = max_update_norm
        self.reply_filter = reply_filter
        self.outcomes: dict[int, RoundOutcome] = {}
        self._sent: dict[int, ArrayRecord] = {}
        self._decoded: dict[int, list[np.ndarray]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.outcomes[server_round] = RoundOutcome(server_round)
        self._sent = {server_round: arrays}
        if self.name == "fedprox":
            config["proximal-mu"] = float(self.params.proximal_mu)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        outcome = self.outcomes.setdefault(server_round, RoundOutcome(server_round))
        received = list(replies)
        if self.reply_filter is not None:
            received = self.reply_filter(server_round, received)
        sound = self._sanitize(server_round, received, outcome)
        outcome.participants = len(sound)
        if not sound:
            return None, None
        arrays = self._aggregate_arrays(sound)
        contents = [msg.content for msg in sound]
        metrics = average_train_metrics(
            self.train_metrics_aggr_fn, contents, [_metrics(msg) for msg in sound], self.weighted_by_key
        )
        if metrics is not None:
            outcome.train_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        return arrays, metrics

    def _sanitize(self, server_round: int, replies: list[Message], outcome: RoundOutcome) -> list[Message]:
        expected = self._sent.get(server_round)
        self._decoded = {}
        checked: list[tuple[Message, str | None]] = []
        for msg in replies:
            reply = check_reply(msg, self.max_update_norm, expected)
            if isinstance(reply, str):
                checked.append((msg, reply))
            else:
                self._decoded[id(msg)] = [np.asarray(view) for view in reply.views]
                checked.append((msg, None))
        # Flower refuses replies whose metric keys differ, and its averaging raises on values
        # of another form (a list where the others sent a number): keep the most common metrics.
        usual = usual_metric_shape([_metrics(m) for m, p in checked if p is None])
        sound: list[Message] = []
        for msg, problem in checked:
            if problem is None:
                mismatch = metric_mismatch(_metrics(msg), usual)
                if mismatch is not None:
                    problem = f"node {msg.metadata.src_node_id}: {mismatch}"
            if problem is None:
                sound.append(msg)
            else:
                outcome.failures += 1
                outcome.reasons.append(problem)
                log.warning("round %d: dropped reply: %s", server_round, problem)
        return sound

    def _aggregate_arrays(self, sound: list[Message]) -> ArrayRecord:
        records = [next(iter(msg.content.array_records.values())) for msg in sound]
        keys = list(records[0].keys())
        decoded = [self._decoded.get(id(m)) or r.to_numpy_ndarrays() for m, r in zip(sound, records, strict=True)]
        self._decoded = {}
        stack = np.stack([robust.flatten(arrays) for arrays in decoded])
        vector = self._kernel(stack, sound)
        return ArrayRecord({k: Array(a) for k, a in zip(keys, robust.unflatten(vector, decoded[0]), strict=True)})

    def _kernel(self, stack: np.ndarray, sound: list[Message]) -> robust.Vector:
        n, p = stack.shape[0], self.params
        if self.name in ("fedavg", "fedprox"):
            weights = [float(_metrics(m)[self.weighted_by_key]) for m in sound]  # type: ignore[arg-type]
            return robust.weighted_mean(stack, weights)
        if self.name == "median":
            return robust.coordinate_median(stack)
        if self.name == "trimmed-mean":
            return robust.trimmed_mean(stack, p.trim_beta)
        f = min(p.byzantine, max(n - 3, 0))  # Krum needs n > f + 2: with few replies, assume fewer attackers
        if n < 3:
            return robust.coordinate_median(stack)  # too few replies for Krum's neighbourhoods
        if self.name == "krum":
            return robust.multi_krum(stack, f, 1)
        keep = p.keep if p.keep > 0 else n - f
        return robust.multi_krum(stack, f, min(keep, n))


def _metrics(msg: Message) -> MetricRecord:
    """The one MetricRecord of a reply that passed ``check_reply``."""
    return split_records(msg.content)[1][0]


def build_strategy(
    name: str,
    *,
    min_nodes: int,
    params: Mapping[str, float | int] | StrategyParams | None = None,
    fraction_train: float = 1.0,
    reply_filter: ReplyFilter | None = None,
    node_wait_s: float = DEFAULT_NODE_WAIT_S,
) -> CatalogStrategy:
    """The catalog entry ``name`` with its parameters (unknown names and parameters are errors)."""
    if isinstance(params, Mapping):
        known = set(StrategyParams.__dataclass_fields__)
        unknown = set(params) - known
        if unknown:
            raise ServerError(f"unknown strategy parameters {sorted(unknown)}; known: {sorted(known)}")
        params = StrategyParams(**params)  # type: ignore[arg-type]
    return CatalogStrategy(
        name,
        min_nodes=min_nodes,
        params=params,
        fraction_train=fraction_train,
        reply_filter=reply_filter,
        node_wait_s=node_wait_s,
    )
