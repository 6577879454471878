"""reply_problem and SanitizedFedAvg.aggregate_train on real Flower messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from server.federation.replies import MetricValue
from server.federation.strategy import SanitizedFedAvg, reply_problem

pytestmark = pytest.mark.usefixtures("task_identity")

SHAPES = [(4, 3), (3,)]


def arrays(value: float) -> ArrayRecord:
    return ArrayRecord([np.full(shape, value, dtype=np.float32) for shape in SHAPES])


def instruction(node_id: int, server_round: int = 1) -> Message:
    content = RecordDict({"arrays": arrays(0.0), "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN, group_id=str(server_round))


def reply(
    node_id: int,
    record: ArrayRecord,
    num_examples: float,
    loss: float = 0.5,
    extra_metrics: dict[str, float] | None = None,
) -> Message:
    metrics = MetricRecord({"num-examples": num_examples, "train-loss": loss, **(extra_metrics or {})})
    return Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=instruction(node_id))


def error_reply(node_id: int, reason: str) -> Message:
    return Message(Error(code=0, reason=reason), reply_to=instruction(node_id))


def values(record: ArrayRecord) -> list[np.ndarray]:
    return record.to_numpy_ndarrays()


def test_reply_identity_comes_from_the_instruction() -> None:
    msg = reply(17, arrays(1.0), 10)
    assert msg.metadata.src_node_id == 17
    assert msg.metadata.message_type == MessageType.TRAIN


def test_sound_reply_has_no_problem() -> None:
    assert reply_problem(reply(2, arrays(1.0), 10), max_norm=1e4) is None
    assert reply_problem(reply(2, arrays(1.0), 10), max_norm=1e4, expected=arrays(0.0)) is None


@pytest.mark.parametrize(
    ("msg_factory", "fragment"),
    [
        (lambda: reply(3, arrays(float("nan")), 10), "non-finite"),
        (lambda: reply(3, arrays(float("inf")), 10), "non-finite"),
        (lambda: reply(3, arrays(1.0), 0), "no labelled examples"),
        (lambda: reply(3, arrays(1.0), -5), "no labelled examples"),
        (lambda: reply(3, arrays(1.0), float("nan")), "num-examples"),
        (lambda: reply(3, arrays(1.0), float("inf")), "num-examples"),
        (lambda: reply(3, arrays(1.0), 1e308), "num-examples 1e+308 is beyond any real dataset"),
        (lambda: reply(3, arrays(1.0), 10**400), "num-examples"),
        (lambda: reply(3, arrays(1.0), 10, loss=float("nan")), "metric 'train-loss' is not finite"),
        (lambda: reply(3, arrays(1.0), 10, extra_metrics={"auc": float("-inf")}), "metric 'auc' is not finite"),
        (lambda: reply(3, arrays(1e6), 10), "norm"),
        (lambda: error_reply(3, "ClientApp crashed"), "ClientApp crashed"),
    ],
)
def test_reply_problems_name_the_node_and_the_reason(msg_factory, fragment: str) -> None:  # type: ignore[no-untyped-def]
    problem = reply_problem(msg_factory(), max_norm=1e4)
    assert problem is not None
    assert "node 3" in problem
    assert fragment in problem


def test_reply_without_metrics_or_with_two_array_records_is_a_problem() -> None:
    no_metrics = Message(RecordDict({"arrays": arrays(1.0)}), reply_to=instruction(4))
    assert "MetricRecord" in (reply_problem(no_metrics, 1e4) or "")
    two = Message(
        RecordDict({"a": arrays(1.0), "b": arrays(1.0), "metrics": MetricRecord({"num-examples": 3})}),
        reply_to=instruction(4),
    )
    assert "ArrayRecord" in (reply_problem(two, 1e4) or "")


def test_reply_for_another_model_is_a_problem() -> None:
    wrong = ArrayRecord([np.ones((5, 3), dtype=np.float32), np.ones((3,), dtype=np.float32)])
    problem = reply_problem(reply(5, wrong, 10), 1e4, expected=arrays(0.0))
    assert problem is not None
    assert "do not match" in problem


def test_sound_replies_are_averaged_by_num_examples() -> None:
    strategy = SanitizedFedAvg(min_nodes=1)
    agg, metrics = strategy.aggregate_train(1, [reply(2, arrays(1.0), 1, loss=0.2), reply(3, arrays(4.0), 3, loss=0.6)])
    assert agg is not None
    assert metrics is not None
    for nd, shape in zip(values(agg), SHAPES, strict=True):
        assert nd.shape == shape
        np.testing.assert_allclose(nd, 3.25)  # (1*1 + 3*4) / 4
    assert metrics["train-loss"] == pytest.approx(0.5)  # (1*0.2 + 3*0.6) / 4
    outcome = strategy.outcomes[1]
    assert (outcome.participants, outcome.failures, outcome.reasons) == (2, 0, [])
    assert math.isclose(outcome.train_metrics["train-loss"], 0.5)


def test_bad_replies_are_dropped_and_counted_with_reasons() -> None:
    strategy = SanitizedFedAvg(min_nodes=1, max_update_norm=100.0)
    replies = [
        reply(2, arrays(2.0), 5),
        reply(3, arrays(float("nan")), 5),
        reply(4, arrays(1.0), 0),
        reply(5, arrays(1e3), 5),
        error_reply(6, "out of memory"),
    ]
    agg, _ = strategy.aggregate_train(1, replies)
    assert agg is not None
    for nd in values(agg):
        np.testing.assert_allclose(nd, 2.0)  # only node 2 counted
    outcome = strategy.outcomes[1]
    assert outcome.participants == 1
    assert outcome.failures == 4
    joined = "\n".join(outcome.reasons)
    for fragment in ("node 3: non-finite", "node 4: no labelled examples", "node 5: update norm", "out of memory"):
        assert fragment in joined


def test_all_replies_dropped_gives_no_aggregate() -> None:
    strategy = SanitizedFedAvg(min_nodes=1)
    agg, metrics = strategy.aggregate_train(2, [reply(2, arrays(float("nan")), 5), error_reply(3, "boom")])
    assert (agg, metrics) == (None, None)
    assert strategy.outcomes[2].participants == 0
    assert strategy.outcomes[2].failures == 2


def test_no_replies_gives_no_aggregate() -> None:
    strategy = SanitizedFedAvg(min_nodes=1)
    assert strategy.aggregate_train(3, []) == (None, None)
    assert strategy.outcomes[3].failures == 0


def test_a_reply_with_other_metric_keys_is_dropped_not_fatal() -> None:
    """Flower's FedAvg raises on differing metric keys, which would end the whole run."""
    strategy = SanitizedFedAvg(min_nodes=1)
    replies = [
        reply(2, arrays(1.0), 1),
        reply(3, arrays(3.0), 1),
        reply(4, arrays(9.0), 1, extra_metrics={"other": 1.0}),
    ]
    agg, _ = strategy.aggregate_train(1, replies)
    assert agg is not None
    for nd in values(agg):
        np.testing.assert_allclose(nd, 2.0)
    assert strategy.outcomes[1].failures == 1
    assert "node 4: metric keys differ" in strategy.outcomes[1].reasons[0]


def metrics_reply(node_id: int, record: ArrayRecord, metrics: dict[str, MetricValue]) -> Message:
    return Message(RecordDict({"arrays": record, "metrics": MetricRecord(metrics)}), reply_to=instruction(node_id))


@pytest.mark.parametrize(
    ("odd", "usual"),
    [
        ([0.5, 0.5], 0.5),  # a list where the others sent a number
        (0.5, [0.5, 0.5]),  # a number where the others sent a list
        ([0.5], [0.5, 0.5]),  # a list of another length
    ],
)
def test_a_reply_whose_metric_has_another_form_is_dropped_not_fatal(odd: MetricValue, usual: MetricValue) -> None:
    """Flower's averaging raises on such a reply (TypeError/ValueError), which would end the whole run."""
    strategy = SanitizedFedAvg(min_nodes=1)
    replies = [
        metrics_reply(2, arrays(9.0), {"num-examples": 1, "train-loss": odd}),  # first: the majority decides
        metrics_reply(3, arrays(1.0), {"num-examples": 1, "train-loss": usual}),
        metrics_reply(4, arrays(3.0), {"num-examples": 1, "train-loss": usual}),
    ]
    agg, metrics = strategy.aggregate_train(1, replies)
    assert agg is not None
    assert metrics is not None
    for nd in values(agg):
        np.testing.assert_allclose(nd, 2.0)  # node 2 left out
    assert metrics["train-loss"] == pytest.approx(usual)
    outcome = strategy.outcomes[1]
    assert (outcome.participants, outcome.failures) == (2, 1)
    assert outcome.reasons == [
        "node 2: metric values differ in form (number or list length) from the other replies': train-loss"
    ]


def test_a_reply_with_a_non_finite_metric_is_dropped_so_the_round_metrics_stay_finite() -> None:
    strategy = SanitizedFedAvg(min_nodes=1)
    replies = [
        reply(2, arrays(1.0), 1, loss=0.2),
        reply(3, arrays(3.0), 1, loss=float("nan")),
        metrics_reply(4, arrays(5.0), {"num-examples": 1, "train-loss": [0.1, float("inf")]}),
    ]
    lists = [metrics_reply(5, arrays(1.0), {"num-examples": 1, "train-loss": [0.1, float("inf")]})]
    agg, metrics = strategy.aggregate_train(1, replies)
    assert agg is not None
    assert metrics is not None
    for nd in values(agg):
        np.testing.assert_allclose(nd, 1.0)
    assert metrics["train-loss"] == pytest.approx(0.2)
    assert strategy.outcomes[1].train_metrics == {"train-loss": pytest.approx(0.2)}
    assert strategy.outcomes[1].failures == 2
    assert "node 3: metric 'train-loss' is not finite: nan" in strategy.outcomes[1].reasons
    assert strategy.aggregate_train(2, lists) == (None, None)
    assert "node 5: metric 'train-loss' is not finite" in strategy.outcomes[2].reasons[0]


def test_absurd_example_counts_are_dropped_not_averaged_into_a_zero_model() -> None:
    """Two counts of 1e308 sum to Inf: every factor would be 0 and the global model all zeros."""
    strategy = SanitizedFedAvg(min_nodes=1)
    replies = [reply(2, arrays(1.0), 1e308), reply(3, arrays(2.0), 1e308), reply(4, arrays(3.0), 100)]
    agg, _ = strategy.aggregate_train(1, replies)
    assert agg is not None
    for nd in values(agg):
        np.testing.assert_allclose(nd, 3.0)
    outcome = strategy.outcomes[1]
    assert (outcome.participants, outcome.failures) == (1, 2)
    assert all("beyond any real dataset" in reason for reason in outcome.reasons)
    # The largest count still accepted: floats count exactly up to it.
    assert reply_problem(reply(5, arrays(1.0), float(2**53)), 1e4) is None
