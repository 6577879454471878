"""The CPU FedAvg kernel: Flower's arithmetic (compiled or NumPy loop), norms from the same pass, screening."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from server.aggregation import fedavg as kernel
from server.aggregation.fedavg import (
    MAX_WEIGHT,
    PARALLEL_MIN_VALUES,
    default_workers,
    fedavg,
    normalised,
    resolve_workers,
    screen,
)
from server.errors import AggregationError

SHAPES = [(37, 11), (11,), (5, 3, 2), ()]


def make_updates(k: int, seed: int = 0, dtype: type = np.float32) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) * 0.1).astype(dtype) for s in SHAPES] for _ in range(k)]


def flower_arithmetic(updates: list[list[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """What flwr's aggregate_arrayrecords computes: value * weight, added in order, in the layer's dtype."""
    factors = [w / sum(weights) for w in weights]
    out = [a * factors[0] for a in updates[0]]
    for update, f in zip(updates[1:], factors[1:], strict=True):
        for j, a in enumerate(update):
            out[j] = out[j] + a * f
    return [np.asarray(a) for a in out]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("stack_bytes", [0, kernel.STACK_BYTES])
def test_result_is_bit_identical_to_flowers_arithmetic(
    stack_bytes: int, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", stack_bytes)  # 0: every layer takes the block path
    updates = make_updates(9)
    weights = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    result = fedavg(updates, weights, compiled=compiled)
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
@pytest.mark.parametrize("stack_bytes", [0, kernel.STACK_BYTES])
@pytest.mark.parametrize("compiled", [True, False])
def test_blocks_threads_and_stacking_do_not_change_the_result(
    block: int, workers: int, stack_bytes: int, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = make_updates(6, seed=2)
    weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    reference = fedavg(updates, weights, compiled=False)
    monkeypatch.setattr(kernel, "STACK_BYTES", stack_bytes)  # 0: every layer takes the block path
    result = fedavg(updates, weights, block=block, workers=workers, compiled=compiled)
    for got, want in zip(result.arrays, reference.arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(result.norms(), reference.norms(), rtol=1e-6)


def test_float64_layers_stay_float64_with_flowers_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", 0)
    updates = make_updates(7, seed=12, dtype=np.float64)
    weights = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0]
    result = fedavg(updates, weights, workers=2)
    for got, want in zip(result.arrays, flower_arithmetic(updates, weights), strict=True):
        assert got.dtype == want.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    for sq, update in zip(result.norms(), updates, strict=True):
        assert sq == pytest.approx(sum(float(np.square(a).sum()) for a in update), rel=1e-12)


@pytest.mark.parametrize(("block", "workers"), [(1, 1), (7, 2), (64, 2), (1000, 3), (1 << 19, 2)])
@pytest.mark.parametrize("updates_count", [1, 8, 9, 20])  # the compiled loop adds eight at a time
def test_compiled_blocks_threads_and_update_counts_keep_flowers_bits(
    block: int, workers: int, updates_count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", 0)
    rngs = [np.random.default_rng(k) for k in range(updates_count)]
    updates = [[(rng.standard_normal(100_003) * 0.1).astype(np.float32)] for rng in rngs]
    weights = [float(k % 5 + 1) for k in range(updates_count)]
    result = fedavg(updates, weights, block=block, workers=workers)
    np.testing.assert_array_equal(result.arrays[0], flower_arithmetic(updates, weights)[0])
    want = [float(np.dot(u[0].astype(np.float64), u[0])) for u in updates]
    np.testing.assert_allclose(result.norms(), want, rtol=1e-6)


def odd_layout(k: int, seed: int) -> list[list[np.ndarray]]:
    """Many tensors: odd sizes, empty ones, 0-d ones, large ones cut into blocks and small ones stacked."""
    shapes = [(0,), (), (1,), (3, 0, 2), (70_001,), (13, 17), (), (4099,), (2, 3, 5), (0, 4), (9_999,), (1,)]
    shapes += [(i % 5 + 1, 7) for i in range(40)]
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) * 0.1).astype(np.float32) for s in shapes] for _ in range(k)]


def float64_reference(updates: list[list[np.ndarray]], weights: list[float]) -> list[np.ndarray]:
    w = np.array(weights, dtype=np.float64) / sum(weights)
    return [sum(wk * u[j].astype(np.float64) for wk, u in zip(w, updates, strict=True)) for j in range(len(updates[0]))]


def test_one_thread_and_two_threads_give_identical_results_on_many_odd_tensors() -> None:
    updates = odd_layout(23, seed=7)
    weights = [float(i % 7 + 1) for i in range(23)]
    one = fedavg(updates, weights, block=4096, workers=1)
    two = fedavg(updates, weights, block=4096, workers=2)
    for a, b, want in zip(one.arrays, two.arrays, flower_arithmetic(updates, weights), strict=True):
        assert a.shape == b.shape == want.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(one.norms(), two.norms())


@pytest.mark.parametrize("workers", [1, 2])
def test_many_odd_tensors_are_within_1e_6_of_a_float64_mean(workers: int) -> None:
    updates = odd_layout(31, seed=8)
    weights = [float(17 * i % 11 + 1) for i in range(31)]
    result = fedavg(updates, weights, block=1000, workers=workers)
    for got, exact in zip(result.arrays, float64_reference(updates, weights), strict=True):
        assert got.shape == np.shape(exact)
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-6)
    for sq, update in zip(result.norms(), updates, strict=True):
        assert sq == pytest.approx(sum(float(np.square(a, dtype=np.float64).sum()) for a in update), rel=1e-5)


def test_single_values_in_half_precision_are_added_in_order() -> None:
    # A (K, 1) stack would be reduced pairwise, in float32: the kernel pads it to keep Flower's order.
    rng = np.random.default_rng(9)
    updates = [[np.array(rng.standard_normal() * 3, dtype=np.float16)] for _ in range(50)]
    weights = [float(i + 1) for i in range(50)]
    got = fedavg(updates, weights).arrays[0]
    want = flower_arithmetic(updates, weights)[0]
    assert got.dtype == want.dtype == np.float16
    np.testing.assert_array_equal(got, want)


def test_norms_can_be_left_out_without_changing_the_mean() -> None:
    updates = odd_layout(5, seed=10)
    with_norms = fedavg(updates, [1, 2, 3, 4, 5])
    without = fedavg(updates, [1, 2, 3, 4, 5], norms=False)
    assert without.sq_norms is None
    for a, b in zip(with_norms.arrays, without.arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AggregationError, match="not computed"):
        without.bad_updates()


def test_thread_count_defaults_to_the_cores_for_big_rounds_only() -> None:
    assert resolve_workers(None, PARALLEL_MIN_VALUES - 1) == 1
    assert resolve_workers(None, PARALLEL_MIN_VALUES) == default_workers()
    assert 1 <= default_workers() <= kernel.MAX_WORKERS
    assert resolve_workers(3, 10) == 3
    with pytest.raises(AggregationError, match="workers must be at least 1"):
        fedavg(make_updates(2), [1, 1], workers=0)


def test_squared_norms_come_from_the_same_pass() -> None:
    updates = make_updates(4, seed=3)
    result = fedavg(updates, [1, 1, 1, 1])
    for sq, update in zip(result.norms(), updates, strict=True):
        assert sq == pytest.approx(sum(float(np.square(a, dtype=np.float64).sum()) for a in update), rel=1e-5)
    assert result.bad_updates() == []


@pytest.mark.parametrize("stack_bytes", [0, kernel.STACK_BYTES])
def test_non_float_layers_average_in_float64_and_half_floats_keep_their_dtype(
    stack_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", stack_bytes)
    ints = [[np.array([1, 2, 3], dtype=np.int64)], [np.array([4, 5, 6], dtype=np.int64)]]
    result = fedavg(ints, [1, 3])
    assert result.arrays[0].dtype == np.float64
    np.testing.assert_allclose(result.arrays[0], [3.25, 4.25, 5.25])
    halves = [[np.full(4, 200.0, dtype=np.float16)], [np.full(4, 100.0, dtype=np.float16)]]
    result = fedavg(halves, [1, 1])
    assert result.arrays[0].dtype == np.float16
    np.testing.assert_array_equal(result.arrays[0], np.full(4, 150.0, dtype=np.float16))
    assert math.isfinite(result.norms()[0])  # 4 * 200**2 overflows float16, not the float32 norm


@pytest.mark.parametrize("stack_bytes", [0, kernel.STACK_BYTES])
def test_screen_leaves_out_non_finite_and_oversized_updates_with_reasons(
    stack_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", stack_bytes)
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
    assert len(averaged.norms()) == 5  # norms of every update, sound or not


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


@pytest.mark.parametrize(
    "weights",
    [[1, 0], [1, -2], [1, float("nan")], [1, float("inf")], [True, 1], [], [1e308, 1e308], [2.0**53 + 2, 1], [10**400]],
)
def test_weights_that_would_poison_the_mean_are_refused(weights: list[float]) -> None:
    with pytest.raises(AggregationError):
        normalised(weights)


def test_huge_weights_are_refused_never_averaged_into_zeros() -> None:
    """Two weights of 1e308 sum to Inf: every factor would be 0 and the mean all zeros."""
    updates = [[np.full(3, 1.0, dtype=np.float32)], [np.full(3, 2.0, dtype=np.float32)]]
    with pytest.raises(AggregationError, match="no dataset has that many examples"):
        fedavg(updates, [1e308, 1e308])
    with pytest.raises(AggregationError, match="no dataset"):
        screen(updates, [1e308, 1e308], max_norm=10.0)
    assert normalised([MAX_WEIGHT, MAX_WEIGHT]) == [0.5, 0.5]  # the bound itself is a weight


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


@pytest.mark.parametrize("stack_bytes", [0, kernel.STACK_BYTES])
def test_big_endian_layers_give_the_same_mean(stack_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", stack_bytes)
    updates = make_updates(3, seed=11)
    swapped = [[a.astype(a.dtype.newbyteorder(">")) for a in update] for update in updates]
    # Non-native byte order takes the NumPy loop (the compiled one reads native order only).
    got = fedavg(swapped, [1, 2, 3])
    for a, b in zip(got.arrays, fedavg(updates, [1, 2, 3]).arrays, strict=True):
        np.testing.assert_array_equal(a, b)
