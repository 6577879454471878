"""The compiled loop: Flower's bits at every chunk edge and update count, NaN/Inf kept, a NumPy fallback."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from server.aggregation import compiled
from server.aggregation import fedavg as kernel
from server.aggregation.compiled import CompiledLayers
from server.aggregation.fedavg import fedavg, normalised, screen


def numpy_mean(xs: list[np.ndarray], factors: list[float]) -> np.ndarray:
    """Flower's arithmetic: products in the array's dtype, added in update order."""
    out = xs[0] * factors[0]
    for x, f in zip(xs[1:], factors[1:], strict=True):
        out = out + x * f
    return np.asarray(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 2, 7, 8, 9, 16, 17])
def test_every_chunk_edge_and_group_remainder_keeps_flowers_bits(
    count: int, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "CHUNK", 5)  # many chunks, and a short one at the end
    rng = np.random.default_rng(count)
    xs = [(rng.standard_normal(23) * 0.1).astype(dtype) for _ in range(count)]
    factors = normalised([float(k % 4 + 1) for k in range(count)])
    layers = CompiledLayers([[x] for x in xs], [0], factors)
    want = numpy_mean(xs, factors)
    for start, stop in [(0, 23), (3, 17), (22, 23)]:  # blocks at odd offsets, as the threads get them
        out = np.empty(stop - start, dtype=dtype)
        sq = np.zeros(count)
        layers.weighted_sum(out, 0, start, sq)
        np.testing.assert_array_equal(out, want[start:stop])
        np.testing.assert_allclose(sq, [float(np.dot(x[start:stop], x[start:stop])) for x in xs], rtol=1e-6)


def test_without_norms_the_mean_is_the_same() -> None:
    xs = [np.arange(40, dtype=np.float32) * k for k in range(1, 12)]
    factors = normalised([1.0] * 11)
    layers = CompiledLayers([[x] for x in xs], [0], factors)
    with_norms, without = np.empty(40, np.float32), np.empty(40, np.float32)
    layers.weighted_sum(with_norms, 0, 0, np.zeros(11))
    layers.weighted_sum(without, 0, 0, None)
    np.testing.assert_array_equal(with_norms, without)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("position", [0, 9_999, 50_000])  # a chunk's first value, a chunk's last, mid-chunk
def test_a_non_finite_value_in_a_large_layer_is_screened_out(
    bad: float, position: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "CHUNK", 10_000)
    monkeypatch.setattr(kernel, "STACK_BYTES", 0)
    rng = np.random.default_rng(3)
    updates = [[(rng.standard_normal(60_000) * 0.1).astype(np.float32)] for _ in range(10)]
    updates[8][0][position] = bad  # the ninth: the last of the compiled loop's first group of eight
    averaged, problems = screen(updates, [1.0] * 10, max_norm=1e6)
    assert problems == {8: "non-finite values in update"}
    assert averaged is not None
    sound = updates[:8] + updates[9:]
    np.testing.assert_array_equal(averaged.arrays[0], numpy_mean([u[0] for u in sound], normalised([1.0] * 9)))


def test_read_only_and_writable_updates_mix_in_one_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Updates viewed over received bytes are read-only; arrays made in memory are not. Both are read in place.
    monkeypatch.setattr(kernel, "STACK_BYTES", 0)
    rng = np.random.default_rng(5)
    writable = [(rng.standard_normal(3000) * 0.1).astype(np.float32) for _ in range(5)]
    received = [np.frombuffer(x.tobytes(), dtype=np.float32) for x in writable]
    assert not received[0].flags.writeable
    mixed = [[received[0]], [writable[1]], [received[2]], [writable[3]], [received[4]]]
    got = fedavg(mixed, [1, 2, 3, 4, 5]).arrays[0]
    np.testing.assert_array_equal(got, numpy_mean(writable, normalised([1, 2, 3, 4, 5])))
    assert writable[1].flags.writeable  # the caller's arrays are left as they were


def test_only_large_native_float32_and_float64_layers_are_compiled() -> None:
    big = 1 << 20
    layout = [
        ((big,), np.dtype(np.float32)),
        ((big,), np.dtype(np.float64)),
        ((big,), np.dtype(np.float16)),
        ((big,), np.dtype(np.int32)),
        ((big,), np.dtype(">f4")),
        ((10,), np.dtype(np.float32)),  # small: stacked with the others
    ]
    assert kernel._compilable_layers(layout, updates=4) == {0, 1}


def test_without_numba_the_numpy_loop_gives_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kernel, "STACK_BYTES", 0)
    rng = np.random.default_rng(9)
    updates = [[(rng.standard_normal(5000) * 0.1).astype(np.float32)] for _ in range(11)]
    weights = [float(k + 1) for k in range(11)]
    with_numba = fedavg(updates, weights)
    monkeypatch.setitem(sys.modules, "server.aggregation.compiled", None)  # importing it now fails
    monkeypatch.setattr(kernel, "_WARNED", [])
    with caplog.at_level(logging.WARNING, logger="server.aggregation.fedavg"):
        without = fedavg(updates, weights)
        fedavg(updates, weights)
    np.testing.assert_array_equal(without.arrays[0], with_numba.arrays[0])
    np.testing.assert_allclose(without.norms(), with_numba.norms(), rtol=1e-6)
    warnings = [r.getMessage() for r in caplog.records if "NumPy loop only" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not once per round
