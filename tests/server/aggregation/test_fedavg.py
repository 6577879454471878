"""The CPU FedAvg kernel: Flower's arithmetic exactly, norms from the same pass, bad updates screened out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.aggregation.fedavg import fedavg, normalised, screen
from server.errors import AggregationError

SHAPES = [(37, 11), (11,), (5, 3, 2), ()]


def make_updates(k: int, seed: int = 0, dtype: type = np.float32) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) * 0.1).astype(dtype) for s in SHAPES] for _ in range(k)]


def flower_arithmetic(updates: list[list[np.ndarray]], weights: list[float]) -> list[np.ndarray]:
    """What flwr's aggregate_arrayrecords computes: value * weight, added in order, in the layer's dtype."""
    factors = [w / sum(weights) for w in weights]
    out = [a * factors[0] for a in updates[0]]
    for update, f in zip(updates[1:], factors[1:], strict=True):
        for j, a in enumerate(update):
            out[j] = out[j] + a * f
    return [np.asarray(a) for a in out]


def test_result_is_bit_identical_to_flowers_arithmetic() -> None:
    updates = make_updates(9)
    weights = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    result = fedavg(updates, weights)
    for got, want in zip(result.arrays, flower_arithmetic(updates, weights), strict=True):
        assert got.shape == want.shape
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_result_is_the_weighted_mean_within_1e_6() -> None:
    updates = make_updates(20, seed=1)
    weights = [float(i + 1) for i in range(20)]
    result = fedavg(updates, weights)
    w = np.array(weights) / sum(weights)
    for j, got in enumerate(result.arrays):
        exact = sum(wk * u[j].astype(np.float64) for wk, u in zip(w, updates, strict=True))
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("block", "workers"), [(1, 1), (7, 1), (64, 3), (1 << 16, 4)])
def test_blocks_and_threads_do_not_change_the_result(block: int, workers: int) -> None:
    updates = make_updates(6, seed=2)
    weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    reference = fedavg(updates, weights)
    result = fedavg(updates, weights, block=block, workers=workers)
    for got, want in zip(result.arrays, reference.arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(result.sq_norms, reference.sq_norms, rtol=1e-6)


def test_squared_norms_come_from_the_same_pass() -> None:
    updates = make_updates(4, seed=3)
    result = fedavg(updates, [1, 1, 1, 1])
    for sq, update in zip(result.sq_norms, updates, strict=True):
        assert sq == pytest.approx(sum(float(np.square(a, dtype=np.float64).sum()) for a in update), rel=1e-5)
    assert result.bad_updates() == []


def test_non_float_layers_average_in_float64_and_half_floats_keep_their_dtype() -> None:
    ints = [[np.array([1, 2, 3], dtype=np.int64)], [np.array([4, 5, 6], dtype=np.int64)]]
    result = fedavg(ints, [1, 3])
    assert result.arrays[0].dtype == np.float64
    np.testing.assert_allclose(result.arrays[0], [3.25, 4.25, 5.25])
    halves = [[np.full(4, 200.0, dtype=np.float16)], [np.full(4, 100.0, dtype=np.float16)]]
    result = fedavg(halves, [1, 1])
    assert result.arrays[0].dtype == np.float16
    np.testing.assert_array_equal(result.arrays[0], np.full(4, 150.0, dtype=np.float16))
    assert math.isfinite(result.sq_norms[0])  # 4 * 200**2 overflows float16, not the float32 norm


def test_screen_leaves_out_non_finite_and_oversized_updates_with_reasons() -> None:
    updates = make_updates(5, seed=4)
    updates[1][0][3, 3] = np.nan
    updates[2][1][0] = -np.inf
    updates[3] = [a * 1e4 for a in updates[3]]
    averaged, problems = screen(updates, [1, 1, 1, 1, 1], max_norm=100.0)
    assert problems.keys() == {1, 2, 3}
    assert problems[1] == problems[2] == "non-finite values in update"
    assert "above bound 100" in problems[3]
    assert averaged is not None
    expected = fedavg([updates[0], updates[4]], [1, 1])
    for got, want in zip(averaged.arrays, expected.arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(averaged.sq_norms) == 5  # norms of every update, sound or not


def test_a_norm_that_overflows_float32_is_a_norm_problem_not_a_non_finite_one() -> None:
    updates = [[np.full(8, 1e30, dtype=np.float32)], [np.ones(8, dtype=np.float32)]]
    _, problems = screen(updates, [1, 1], max_norm=1e4)
    assert "above bound" in problems[0]
    assert 1 not in problems


def test_screen_with_nothing_sound_gives_no_mean() -> None:
    updates = [[np.array([np.nan], dtype=np.float32)], [np.array([np.inf], dtype=np.float32)]]
    averaged, problems = screen(updates, [1, 2], max_norm=10.0)
    assert averaged is None
    assert set(problems) == {0, 1}


@pytest.mark.parametrize("weights", [[1, 0], [1, -2], [1, float("nan")], [1, float("inf")], [True, 1], []])
def test_weights_that_would_poison_the_mean_are_refused(weights: list[float]) -> None:
    with pytest.raises(AggregationError):
        normalised(weights)


def test_mismatched_updates_are_refused_with_the_culprit() -> None:
    a = [np.zeros((2, 2), dtype=np.float32)]
    with pytest.raises(AggregationError, match="update 1 array 0"):
        fedavg([a, [np.zeros((2, 3), dtype=np.float32)]], [1, 1])
    with pytest.raises(AggregationError, match="update 1 array 0"):
        fedavg([a, [np.zeros((2, 2), dtype=np.float64)]], [1, 1])
    with pytest.raises(AggregationError, match="update 1 has 2 arrays"):
        fedavg([a, a * 2], [1, 1])
    with pytest.raises(AggregationError, match="2 updates but 1 weights"):
        fedavg([a, a], [1])
    with pytest.raises(AggregationError, match="no updates"):
        fedavg([], [])
