"""The Flower adapter of the aggregation kernels: same result as Flower's aggregate_arrayrecords."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from server.aggregation import fedavg as kernel
from server.aggregation.npy import npy_bytes
from server.errors import AggregationError
from server.federation.aggregate import aggregate_records, record_views, use_gpu
from server.federation.strategy import SanitizedFedAvg, reply_problem
from tests.server.federation.test_sanitized_fedavg import arrays, reply, values

pytestmark = pytest.mark.usefixtures("task_identity")


def model_record(rng: np.random.Generator) -> ArrayRecord:
    return ArrayRecord(
        {
            "fc1.weight": Array(rng.standard_normal((64, 30)).astype(np.float32)),
            "fc1.bias": Array(rng.standard_normal(64).astype(np.float32)),
            "bn.num_batches_tracked": Array(np.array(rng.integers(0, 100), dtype=np.int64)),
            "out.weight": Array(rng.standard_normal((1, 64)).astype(np.float32)),
        }
    )


def flower_case(seed: int) -> tuple[list[ArrayRecord], list[int], ArrayRecord]:
    rng = np.random.default_rng(seed)
    records = [model_record(rng) for _ in range(7)]
    weights = [int(w) for w in rng.integers(1, 500, size=7)]
    contents = [
        RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": w})})
        for r, w in zip(records, weights, strict=True)
    ]
    return records, weights, aggregate_arrayrecords(contents, "num-examples")


@pytest.mark.parametrize("stack_bytes", [0, kernel.STACK_BYTES])  # 0: every float layer takes the compiled loop
def test_same_result_as_flowers_aggregate_arrayrecords(stack_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", stack_bytes)
    records, weights, want = flower_case(0)
    got = aggregate_records(records, weights)
    assert list(got.keys()) == list(want.keys())
    for key in want:
        a, b = got[key].numpy(), want[key].numpy()
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("exact", [True, False])
def test_the_strategy_gives_flowers_bits_on_the_cpu(exact: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", 0)
    records, weights, want = flower_case(1)
    replies = [reply(i + 1, r, w) for i, (r, w) in enumerate(zip(records, weights, strict=True))]
    agg, _ = SanitizedFedAvg(min_nodes=1, exact=exact).aggregate_train(1, replies)
    assert agg is not None
    for key in want:
        np.testing.assert_array_equal(agg[key].numpy(), want[key].numpy())


def test_arrays_not_serialised_as_numpy_are_refused() -> None:
    record = ArrayRecord({"w": Array(dtype="float32", shape=(1,), stype="torch.save", data=b"\x00" * 4)})
    with pytest.raises(AggregationError, match=r"torch\.save"):
        record_views(record)


def test_undecodable_bytes_make_a_reply_problem() -> None:
    bad = ArrayRecord(
        {
            "0": Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=b"not npy"),
            "1": Array(np.zeros(3, dtype=np.float32)),
        }
    )
    problem = reply_problem(reply(8, bad, 10), 1e4)
    assert problem is not None
    assert "node 8: undecodable arrays" in problem


def test_a_reply_with_another_layout_is_dropped_even_without_the_model_sent() -> None:
    strategy = SanitizedFedAvg(min_nodes=1, device="auto")
    odd = ArrayRecord([np.ones((4, 3), dtype=np.float32), np.ones((4,), dtype=np.float32)])
    agg, _ = strategy.aggregate_train(1, [reply(2, arrays(1.0), 1), reply(3, arrays(3.0), 1), reply(4, odd, 1)])
    assert agg is not None
    for nd in values(agg):
        np.testing.assert_allclose(nd, 2.0)
    assert strategy.outcomes[1].participants == 2
    assert "node 4: arrays differ" in strategy.outcomes[1].reasons[0]


def test_small_rounds_and_exact_rounds_stay_on_the_cpu() -> None:
    assert not use_gpu("auto", 3, 1000)
    assert not use_gpu("cpu", 100, 10_000_000)
    assert not use_gpu("cuda", 100, 10_000_000, exact=True)


def test_bytes_that_contradict_the_declared_dtype_make_a_reply_problem() -> None:
    forged = ArrayRecord(
        {
            "0": Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=npy_bytes(np.zeros((4, 3)))),
            "1": Array(np.zeros(3, dtype=np.float32)),
        }
    )
    problem = reply_problem(reply(9, forged, 10), 1e4)
    assert problem is not None
    assert "node 9: array bytes do not match their declared shapes or dtypes" in problem
