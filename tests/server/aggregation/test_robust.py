"""The robust kernels on updates where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from server.aggregation import robust
from server.errors import ServerError


@pytest.fixture
def honest_and_byzantine() -> np.ndarray:
    rng = np.random.default_rng(0)
    honest = 1.0 + 0.01 * rng.standard_normal((8, 50))
    attackers = -20.0 * np.ones((2, 50))
    return np.vstack([honest, attackers])


def test_weighted_mean_weights_by_examples() -> None:
    out = robust.weighted_mean(np.array([[0.0, 0.0], [4.0, 8.0]]), [3, 1])
    assert out == pytest.approx([1.0, 2.0])


def test_mean_is_dragged_by_attackers_median_and_trimmed_mean_are_not(honest_and_byzantine: np.ndarray) -> None:
    mean = robust.weighted_mean(honest_and_byzantine, np.ones(10))
    assert np.all(mean < -2.0)
    assert np.allclose(robust.coordinate_median(honest_and_byzantine), 1.0, atol=0.05)
    assert np.allclose(robust.trimmed_mean(honest_and_byzantine, 0.2), 1.0, atol=0.05)


def test_krum_selects_honest_updates(honest_and_byzantine: np.ndarray) -> None:
    chosen = robust.krum_select(honest_and_byzantine, byzantine=2, keep=5)
    assert set(chosen.tolist()) <= set(range(8))
    assert np.allclose(robust.multi_krum(honest_and_byzantine, 2, 6), 1.0, atol=0.05)


def test_pairwise_distances_match_the_direct_computation() -> None:
    stack = np.random.default_rng(1).standard_normal((6, 9))
    direct = ((stack[:, None, :] - stack[None, :, :]) ** 2).sum(-1)
    assert np.allclose(robust.pairwise_sq_distances(stack), direct)


def test_flatten_round_trips_shapes() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7.0], dtype=np.float32)]
    back = robust.unflatten(robust.flatten(arrays), arrays)
    assert [a.shape for a in back] == [(2, 3), (1,)]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: robust.krum_scores(np.ones((3, 2)), 1), "n > f \\+ 2"),
        (lambda: robust.trimmed_mean(np.ones((3, 2)), 0.5), "beta"),
        (lambda: robust.weighted_mean(np.ones((2, 2)), [1.0]), "weights"),
        (lambda: robust.weighted_mean(np.ones((2, 2)), [1e308, 1e308]), "2\\*\\*53"),
        (lambda: robust.weighted_mean(np.ones((2, 2)), [0.0, 0.0]), "positive sum"),
        (lambda: robust.coordinate_median(np.ones((0, 2))), "non-empty"),
    ],
)
def test_bad_parameters_are_clear_errors(call: object, message: str) -> None:
    with pytest.raises(robust.AggregationError, match=message):
        call()  # type: ignore[operator]


def test_huge_weights_are_refused_not_averaged_into_zeros() -> None:
    """Two weights of 1e308 sum to Inf: (w / sum) would be all zeros, and so would the model."""
    with pytest.raises(ServerError, match="at most"):  # the server's one error tree
        robust.weighted_mean(np.ones((2, 3)), [1e308, 1e308])
