"""Byzantine-robust aggregation kernels over stacked client updates.

Each kernel takes the replies as one matrix, one row per client (the flattened model), so
the work is a handful of vectorized numpy operations instead of a Python loop over
clients and layers; 1,000 updates of the fraud MLP aggregate in milliseconds. The
strategies in ``server.federation.strategies`` flatten Flower's ArrayRecords into such a
matrix and unflatten the result.

References: coordinate-wise median and trimmed mean (Yin et al., 2018); Krum and
multi-Krum (Blanchard et al., 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from server.aggregation.fedavg import MAX_WEIGHT
from server.errors import AggregationError as AggregationError  # the server's tree: callers catch one root

Matrix = npt.NDArray[np.floating]
Vector = npt.NDArray[np.float64]


def _check(updates: Matrix) -> npt.NDArray[np.float64]:
    stack = np.asarray(updates, dtype=np.float64)
    if stack.ndim != 2 or stack.shape[0] == 0:
        raise AggregationError(f"expected a non-empty (clients, parameters) matrix, got shape {stack.shape}")
    return stack


def weighted_mean(updates: Matrix, weights: Sequence[float] | npt.NDArray[np.floating]) -> Vector:
    """FedAvg: the mean weighted by each client's example count.

    Weights above ``MAX_WEIGHT`` are refused like non-finite ones: two of 1e308 would sum to
    Inf and turn the mean into zeros, with nothing flagged.
    """
    stack = _check(updates)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (stack.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > MAX_WEIGHT):
        raise AggregationError(
            f"weights must be one finite, non-negative number per client, at most {MAX_WEIGHT:.3g} (2**53)"
        )
    if not np.isfinite(w.sum()) or w.sum() <= 0:
        raise AggregationError("the weights must have a finite, positive sum")
    out: Vector = (w / w.sum()) @ stack
    return out


def coordinate_median(updates: Matrix) -> Vector:
    """Per coordinate, the median over clients: fewer than half of them cannot move it far."""
    out: Vector = np.median(_check(updates), axis=0)
    return out


def trimmed_mean(updates: Matrix, beta: float) -> Vector:
    """Per coordinate, drop the ``beta`` share of largest and of smallest values, average the rest."""
    stack = _check(updates)
    if not 0.0 <= beta < 0.5:
        raise AggregationError(f"trim share beta must be within [0, 0.5), got {beta}")
    n = stack.shape[0]
    cut = int(np.floor(beta * n))
    if n - 2 * cut <= 0:
        raise AggregationError(f"trimming {cut} from each end of {n} updates leaves nothing")
    ordered = np.sort(stack, axis=0)
    out: Vector = ordered[cut : n - cut].mean(axis=0)
    return out


def pairwise_sq_distances(stack: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Squared Euclidean distances between all rows, through the Gram matrix (one matmul)."""
    centered = stack - stack.mean(axis=0, keepdims=True)  # same distances, less cancellation
    norms = np.einsum("ij,ij->i", centered, centered)
    d: npt.NDArray[np.float64] = norms[:, None] + norms[None, :] - 2.0 * (centered @ centered.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def krum_scores(updates: Matrix, byzantine: int) -> Vector:
    """Each client's Krum score: the summed squared distance to its n - f - 2 nearest others."""
    stack = _check(updates)
    n = stack.shape[0]
    if byzantine < 0:
        raise AggregationError(f"the number of Byzantine clients must be >= 0, got {byzantine}")
    neighbours = n - byzantine - 2
    if neighbours < 1:
        raise AggregationError(f"Krum needs n > f + 2 updates: n={n}, f={byzantine}")
    d = pairwise_sq_distances(stack)
    np.fill_diagonal(d, np.inf)  # a client is not its own neighbour
    nearest = np.partition(d, neighbours - 1, axis=1)[:, :neighbours]
    scores: Vector = nearest.sum(axis=1)
    return scores


def krum_select(updates: Matrix, byzantine: int, keep: int = 1) -> npt.NDArray[np.intp]:
    """Indices of the ``keep`` clients with the lowest Krum scores (ties: lower index first)."""
    scores = krum_scores(updates, byzantine)
    if not 1 <= keep <= len(scores):
        raise AggregationError(f"keep must be within 1..{len(scores)}, got {keep}")
    order: npt.NDArray[np.intp] = np.argsort(scores, kind="stable")[:keep]
    return order


def multi_krum(updates: Matrix, byzantine: int, keep: int) -> Vector:
    """Mean of the ``keep`` updates Krum trusts most; ``keep=1`` is Krum itself."""
    stack = _check(updates)
    chosen = krum_select(stack, byzantine, keep)
    out: Vector = stack[chosen].mean(axis=0)
    return out


def flatten(arrays: Sequence[npt.NDArray[np.floating]]) -> npt.NDArray[np.float64]:
    """One model's arrays as a single vector (the row of an update matrix)."""
    if not arrays:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(vector: Vector, like: Sequence[npt.NDArray[np.floating]]) -> list[npt.NDArray[np.float32]]:
    """The inverse of ``flatten`` with the shapes of ``like``, as float32 model arrays."""
    total = sum(int(np.prod(a.shape)) for a in like)
    if vector.shape != (total,):
        raise AggregationError(f"vector of shape {vector.shape} does not fit arrays of {total} values")
    out: list[npt.NDArray[np.float32]] = []
    start = 0
    for a in like:
        size = int(np.prod(a.shape))
        out.append(vector[start : start + size].reshape(a.shape).astype(np.float32))
        start += size
    return out
