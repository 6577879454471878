"""The strategy catalog on real Flower messages: robust rules resist a poisoned reply."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message

from server.errors import ServerError
from server.federation.strategies import STRATEGY_NAMES, build_strategy
from tests.server.federation.test_sanitized_fedavg import arrays, metrics_reply, reply, values

pytestmark = pytest.mark.usefixtures("task_identity")


def _replies() -> list[Message]:
    honest = [reply(i, arrays(1.0), 10) for i in range(1, 8)]
    return [*honest, reply(8, arrays(-40.0), 10), reply(9, arrays(-40.0), 10)]


def test_fedavg_is_dragged_by_two_attackers_robust_rules_are_not() -> None:
    fedavg = build_strategy("fedavg", min_nodes=1)
    got, metrics = fedavg.aggregate_train(1, _replies())
    assert got is not None
    assert np.allclose(values(got)[0], (7 * 1.0 - 80.0) / 9)
    assert metrics is not None
    for name, params in [
        ("median", {}),
        ("trimmed-mean", {"trim_beta": 0.25}),
        ("krum", {"byzantine": 2}),
        ("multi-krum", {"byzantine": 2, "keep": 4}),
    ]:
        robust, _ = build_strategy(name, min_nodes=1, params=params).aggregate_train(1, _replies())
        assert robust is not None
        assert all(np.allclose(a, 1.0) for a in values(robust)), name


def test_sanitization_applies_to_every_rule() -> None:
    strategy = build_strategy("median", min_nodes=1)
    poisoned = [*_replies(), reply(10, arrays(float("nan")), 10)]
    got, _ = strategy.aggregate_train(1, poisoned)
    assert got is not None
    assert strategy.outcomes[1].failures == 1
    assert strategy.outcomes[1].participants == 9


def test_the_reply_filter_sees_replies_first() -> None:
    seen: list[int] = []

    def keep_honest(server_round: int, replies: list[Message]) -> list[Message]:
        seen.append(len(replies))
        return [m for m in replies if m.metadata.src_node_id < 8]

    got, _ = build_strategy("fedavg", min_nodes=1, reply_filter=keep_honest).aggregate_train(1, _replies())
    assert seen == [9]
    assert got is not None
    assert all(np.allclose(a, 1.0) for a in values(got))


def test_unknown_names_and_parameters_are_errors() -> None:
    assert set(STRATEGY_NAMES) == {"fedavg", "fedprox", "median", "trimmed-mean", "krum", "multi-krum"}
    with pytest.raises(ServerError, match="unknown strategy 'fedsgd'"):
        build_strategy("fedsgd", min_nodes=1)
    with pytest.raises(ServerError, match="unknown strategy parameters"):
        build_strategy("krum", min_nodes=1, params={"f": 2})


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_odd_metric_forms_non_finite_metrics_and_absurd_counts_are_dropped_by_every_rule(name: str) -> None:
    """Each of these once ended the run (TypeError), stored NaN or averaged into a zero model."""
    strategy = build_strategy(name, min_nodes=1)
    honest = [reply(i, arrays(1.0), 10) for i in range(1, 6)]
    odd = [
        metrics_reply(6, arrays(-40.0), {"num-examples": 10, "train-loss": [0.5, 0.5]}),
        reply(7, arrays(-40.0), 10, loss=float("nan")),
        reply(8, arrays(-40.0), 1e308),
        reply(9, arrays(-40.0), 1e308),
    ]
    got, metrics = strategy.aggregate_train(1, [*honest, *odd])
    assert got is not None
    assert all(np.allclose(a, 1.0) for a in values(got))
    assert metrics is not None
    assert metrics["train-loss"] == pytest.approx(0.5)
    outcome = strategy.outcomes[1]
    assert (outcome.participants, outcome.failures) == (5, 4)
    assert [reason.split(":")[0] for reason in outcome.reasons] == ["node 6", "node 7", "node 8", "node 9"]
