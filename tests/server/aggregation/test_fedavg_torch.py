"""The torch FedAvg path: on the CPU here, on CUDA where there is one (marker gpu), against the NumPy kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from server.aggregation.fedavg import fedavg, screen
from server.aggregation.fedavg_torch import fedavg_torch, resolve_device, weighted_sum_resident
from server.errors import AggregationError
from tests.server.aggregation.test_fedavg import make_updates

HAS_CUDA = torch.cuda.is_available()


def assert_same_mean(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)


def test_cpu_torch_path_agrees_with_the_numpy_kernel() -> None:
    updates = make_updates(12, seed=5)
    weights = [float(i % 4 + 1) for i in range(12)]
    got = fedavg_torch(updates, weights, device="cpu")
    want = fedavg(updates, weights)
    assert_same_mean(got.arrays, want.arrays)
    np.testing.assert_allclose(got.sq_norms, want.sq_norms, rtol=1e-5)


def test_cpu_torch_path_flags_non_finite_updates_and_screens_them() -> None:
    updates = make_updates(4, seed=6)
    updates[2][0][0, 0] = np.nan
    got = fedavg_torch(updates, [1, 1, 1, 1], device="cpu")
    assert got.bad_updates() == [2]
    averaged, problems = screen(updates, [1, 1, 1, 1], max_norm=1e3, mean=lambda u, w: fedavg_torch(u, w, device="cpu"))
    assert problems == {2: "non-finite values in update"}
    assert averaged is not None
    assert_same_mean(averaged.arrays, fedavg([updates[i] for i in (0, 1, 3)], [1, 1, 1]).arrays)


def test_torch_path_refuses_the_weights_the_numpy_kernel_refuses() -> None:
    """Two weights of 1e308 would make every factor 0: no path may return a zero model for them."""
    updates = make_updates(2, seed=8)
    for weights in ([1e308, 1e308], [1.0, float("inf")]):
        with pytest.raises(AggregationError, match="weight"):
            fedavg_torch(updates, weights, device="cpu")
        with pytest.raises(AggregationError, match="weight"):
            weighted_sum_resident(torch.ones((2, 4)), weights)


def test_mixed_dtypes_accumulate_in_float64() -> None:
    updates = [
        [np.array([1, 2], dtype=np.int64), np.array([0.5], dtype=np.float32)],
        [np.array([3, 5], dtype=np.int64), np.array([1.5], dtype=np.float32)],
    ]
    got = fedavg_torch(updates, [1, 1], device="cpu")
    assert got.arrays[0].dtype == np.float64
    np.testing.assert_allclose(got.arrays[0], [2.0, 3.5])
    assert got.arrays[1].dtype == np.float32
    np.testing.assert_allclose(got.arrays[1], [1.0])


def test_big_endian_layers_are_read_too() -> None:
    updates = [[np.arange(6, dtype=">f4")], [(np.arange(6) * 3).astype(">f4")]]
    got = fedavg_torch(updates, [1, 1], device="cpu")
    np.testing.assert_allclose(got.arrays[0], np.arange(6) * 2.0)


def test_resident_stack_reduces_to_the_same_mean() -> None:
    rng = np.random.default_rng(7)
    stack = rng.standard_normal((6, 1000)).astype(np.float32)
    weights = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    mean, sq = weighted_sum_resident(torch.from_numpy(stack), weights)
    want = fedavg([[row] for row in stack], weights)
    np.testing.assert_allclose(mean.numpy(), want.arrays[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(sq.numpy(), want.sq_norms, rtol=1e-5)
    with pytest.raises(AggregationError, match="does not match"):
        weighted_sum_resident(torch.from_numpy(stack), weights[:3])


def test_devices_resolve_and_a_missing_gpu_is_a_clear_error() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    if not HAS_CUDA:
        with pytest.raises(AggregationError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(AggregationError, match="unknown device"):
        resolve_device("abacus")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_gpu_streamed_and_resident_paths_agree_with_the_cpu() -> None:
    updates = make_updates(9, seed=8)
    updates[4][1][0] = np.inf
    weights = [float(i + 1) for i in range(9)]
    got = fedavg_torch(updates, weights, device="cuda")
    want = fedavg(updates, weights)
    assert got.bad_updates() == want.bad_updates() == [4]
    sound = [u for i, u in enumerate(updates) if i != 4]
    sound_w = [w for i, w in enumerate(weights) if i != 4]
    assert_same_mean(fedavg_torch(sound, sound_w, device="cuda").arrays, fedavg(sound, sound_w).arrays)
    flat = np.stack([np.concatenate([a.ravel() for a in u]) for u in sound])
    mean, _ = weighted_sum_resident(torch.from_numpy(flat).cuda(), sound_w)
    cpu_mean = np.concatenate([a.ravel() for a in fedavg(sound, sound_w).arrays])
    np.testing.assert_allclose(mean.cpu().numpy(), cpu_mean, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_a_gpu_result_held_by_the_caller_survives_later_rounds() -> None:
    """The mean lives in pinned memory from torch's caching allocator: a later round must not reuse it."""
    first_updates, weights = make_updates(5, seed=21), [1.0, 2.0, 3.0, 4.0, 5.0]
    first = fedavg_torch(first_updates, weights, device="cuda")
    kept = [a.copy() for a in first.arrays]
    for seed in (22, 23, 24):
        later = fedavg_torch(make_updates(5, seed=seed), weights, device="cuda")
        assert_same_mean(later.arrays, fedavg(make_updates(5, seed=seed), weights).arrays)
    for held, copy in zip(first.arrays, kept, strict=True):
        np.testing.assert_array_equal(held, copy)
    assert_same_mean(first.arrays, fedavg(first_updates, weights).arrays)
