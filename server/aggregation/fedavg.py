"""FedAvg on the CPU: the weighted mean of K updates in one pass over their bytes.

Flower's ``aggregate_arrayrecords`` decodes every array with ``np.load`` (a copy), multiplies
it by its weight (a fresh temporary, page faults included) and adds it in (another pass).
Here each layer is cut into cache-sized blocks; for one block, every update is multiplied
into a scratch buffer that stays in cache and added to the accumulator, which stays in cache
too. The updates' bytes are read exactly once, straight from where they arrived (see
``npy.npy_view``), and the same pass yields each update's squared norm (NaN/Inf when it holds
a non-finite value), so the sanity check costs no second pass over the memory.

The arithmetic is Flower's: weights normalised as ``w / sum(w)`` in Python floats, products
and sums in the layer's own float dtype (float32 models accumulate in float32), updates
added in order. The result is therefore bit-identical to Flower's for the same inputs
(single worker; with several workers blocks run in parallel but each block's order is the
same, so the values are still identical). Non-float layers are averaged in float64, as
NumPy's promotion does in Flower.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from server.errors import AggregationError

Layer = npt.NDArray[np.generic]
Update = Sequence[Layer]

Mean = Callable[[Sequence[Update], Sequence[float]], "Averaged"]

# 64 Ki elements: 256 KiB of float32 per operand, so accumulator + scratch fit in L2.
DEFAULT_BLOCK = 1 << 16


@dataclass(frozen=True)
class Averaged:
    """The weighted mean, and what the one pass learnt about each update."""

    arrays: list[npt.NDArray[np.floating]]
    sq_norms: npt.NDArray[np.float64]  # per update; NaN or Inf when the update is non-finite (or overflows)

    def bad_updates(self) -> list[int]:
        return [i for i, sq in enumerate(self.sq_norms) if not math.isfinite(sq)]


def normalised(weights: Sequence[float]) -> list[float]:
    """``w / sum(w)`` exactly as Flower computes it; refuses weights that would poison the mean."""
    if not weights:
        raise AggregationError("no updates to aggregate")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w <= 0:
            raise AggregationError(f"weights must be finite and positive, got {w!r}")
    total = sum(weights)
    return [w / total for w in weights]


def accumulator_dtype(dtype: np.dtype[np.generic]) -> np.dtype[np.floating]:
    """Float layers keep their dtype; anything else is averaged in float64 (NumPy's promotion)."""
    if np.issubdtype(dtype, np.floating):
        return cast("np.dtype[np.floating]", dtype)
    return np.dtype(np.float64)


def check_layout(updates: Sequence[Update]) -> list[tuple[tuple[int, ...], np.dtype[np.generic]]]:
    """Every update must have the first one's layers: same count, shapes and dtypes."""
    if not updates:
        raise AggregationError("no updates to aggregate")
    layout = [(tuple(a.shape), a.dtype) for a in updates[0]]
    for i, update in enumerate(updates[1:], start=1):
        if len(update) != len(layout):
            raise AggregationError(f"update {i} has {len(update)} arrays, update 0 has {len(layout)}")
        for j, (a, (shape, dtype)) in enumerate(zip(update, layout, strict=True)):
            if tuple(a.shape) != shape or a.dtype != dtype:
                raise AggregationError(
                    f"update {i} array {j} is {a.dtype}{list(a.shape)}, expected {dtype}{list(shape)}"
                )
    return layout


def fedavg(
    updates: Sequence[Update], weights: Sequence[float], *, block: int = DEFAULT_BLOCK, workers: int = 1
) -> Averaged:
    """Weighted mean of ``updates`` (each a list of layers, same layout) with their squared norms.

    ``workers`` > 1 spreads the blocks over threads (NumPy releases the GIL in its loops);
    useful on a many-core server, not on a busy small machine.
    """
    factors = normalised(weights)
    layout = check_layout(updates)
    if len(updates) != len(factors):
        raise AggregationError(f"{len(updates)} updates but {len(factors)} weights")
    if block <= 0:
        raise AggregationError(f"block must be positive, got {block}")
    flats = [[np.ravel(a) for a in update] for update in updates]  # views for C-ordered layers
    outputs = [np.empty(math.prod(shape), dtype=accumulator_dtype(dtype)) for shape, dtype in layout]
    jobs = [
        (j, start, min(out.size, start + block)) for j, out in enumerate(outputs) for start in range(0, out.size, block)
    ]
    sq = np.zeros(len(updates), dtype=np.float64)

    def run(job: tuple[int, int, int]) -> npt.NDArray[np.float64]:
        j, start, stop = job
        return _block(flats, factors, j, start, stop, outputs[j])

    with np.errstate(all="ignore"):  # non-finite updates are reported through sq_norms, not warnings
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                sq += run(job)
        else:
            for part in _pool(workers).map(run, jobs):
                sq += part
    arrays = [out.reshape(shape) for out, (shape, _) in zip(outputs, layout, strict=True)]
    return Averaged(arrays, sq)


def _block(
    flats: list[list[Layer]], factors: list[float], j: int, start: int, stop: int, out: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    acc = out[start:stop]
    scratch = np.empty_like(acc)
    sq = np.empty(len(flats), dtype=np.float64)
    dtype = acc.dtype.type
    for k, layers in enumerate(flats):
        x = layers[j][start:stop]
        if x.dtype != acc.dtype:  # non-float layer: promote once, here, in cache
            x = x.astype(acc.dtype)
        if k == 0:
            np.multiply(x, dtype(factors[k]), out=acc)
        else:
            np.multiply(x, dtype(factors[k]), out=scratch)
            np.add(acc, scratch, out=acc)
        xd = x if x.dtype.itemsize >= 4 else x.astype(np.float32)  # float16 squares overflow early
        sq[k] = float(np.dot(xd, xd))
    return sq


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per size: starting threads per call costs more than a small round."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedavg")
        return pool


def default_workers() -> int:
    """Threads for the CPU kernel: the cores this process may use, at most 8 (memory-bound beyond)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def update_problems(averaged: Averaged, updates: Sequence[Update], max_norm: float) -> dict[int, str]:
    """Which updates must not count, and why, from the norms the pass computed."""
    problems: dict[int, str] = {}
    for i, sq in enumerate(averaged.sq_norms):
        finite = math.isfinite(sq)
        if not finite and not all(np.isfinite(a).all() for a in updates[i] if a.dtype.kind in "fc"):
            problems[i] = "non-finite values in update"
        elif not finite or math.sqrt(sq) > max_norm:  # not finite here: the squares overflowed
            problems[i] = f"update norm {math.sqrt(sq):.3g} above bound {max_norm:.3g}"
    return problems


def screen(
    updates: Sequence[Update], weights: Sequence[float], *, max_norm: float, mean: Mean = fedavg
) -> tuple[Averaged | None, dict[int, str]]:
    """FedAvg over the sound updates only: non-finite or too-large updates are left out with a reason.

    The common case (all sound) is one pass. When some update is bad, the mean is computed
    again without it: its values have already been mixed into the accumulator. ``mean`` is
    the kernel (``fedavg`` here, ``fedavg_torch.fedavg_torch`` on a GPU).
    """
    averaged = mean(updates, weights)
    problems = update_problems(averaged, updates, max_norm)
    if not problems:
        return averaged, problems
    keep = [i for i in range(len(updates)) if i not in problems]
    if not keep:
        return None, problems
    again = mean([updates[i] for i in keep], [weights[i] for i in keep])
    return Averaged(again.arrays, averaged.sq_norms), problems
