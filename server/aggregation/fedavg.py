"""FedAvg on the CPU: the weighted mean of K updates in one pass over their bytes, on several cores.

Flower's ``aggregate_arrayrecords`` decodes every array with ``np.load`` (a copy), multiplies
it by its weight (a fresh temporary, page faults included) and adds it in (another pass).
Here the updates' bytes are read exactly once, straight from where they arrived (see
``npy.npy_view``), and the work is cut into jobs:

- a large layer is cut into blocks; for one block, every update is added into the
  accumulator, which stays in cache while the updates stream past it from memory;
- small layers (biases, norms: a few thousand values) would cost K calls each for almost no
  arithmetic, so all K updates' copies of a group of them are stacked into one cache-sized
  matrix, scaled by the weights and reduced over the updates in three NumPy calls.

Both job kinds use Flower's arithmetic, so the result is bit-identical to Flower's for the
same inputs: weights normalised as ``w / sum(w)`` in Python floats, products rounded in the
layer's own float dtype (float32 models accumulate in float32, as NumPy does for
``float32_array * python_float``), updates added in order (a reduction over the first axis
of a C-ordered stack adds row after row). Non-float layers are averaged in float64, as
NumPy's promotion does in Flower. The blocks of float32/float64 layers run a compiled loop
that adds eight updates per pass over the accumulator (see ``compiled``); other dtypes, and
every block when Numba is missing or ``compiled=False``, run the same arithmetic in NumPy.

Jobs are shared by ``workers`` threads (NumPy and the compiled loop release the GIL, and
a single core cannot draw the memory bandwidth of two). Each output value is summed by one
thread in update order, so the result depends on the inputs alone, never on the block size
or the thread count.

The same pass yields each update's squared norm (NaN/Inf when it holds a non-finite value)
from the values while they are in cache, so the sanity check costs no second pass over the
memory; a caller that does not need them (``norms=False``) skips even that.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from server.aggregation.pools import Pools
from server.errors import AggregationError

if TYPE_CHECKING:
    from server.aggregation.compiled import CompiledLayers

log = logging.getLogger(__name__)

Layer = npt.NDArray[np.generic]
Update = Sequence[Layer]

Mean = Callable[[Sequence[Update], Sequence[float]], "Averaged"]

# Values per block of the NumPy loop: 256 Ki, 1 MiB of float32 per operand.
# Measured on 100 x 1 M float32 (2-core EPYC, 1 MiB L2 a core, 32 MiB L3): 64 Ki blocks took
# 1.9x as long as 256 Ki, 128 Ki 1.3x, 512 Ki the same; few long streams per update read
# memory faster than many short ones, and the accumulator still stays in L2/L3.
DEFAULT_BLOCK = 1 << 18
# Values per block of the compiled loop. It works through a block in chunks of its own (see
# ``compiled.CHUNK``) at no cost per call, so blocks only need to be many enough to share
# evenly between the threads: 64 Ki cuts a 1 M layer into 16.
COMPILED_BLOCK = 1 << 16
# A layer whose K copies fit in this many bytes is stacked (see the module docstring).
STACK_BYTES = 1 << 20
# Below this many values in a round (K x P), threads cost more to wake than the work they share.
PARALLEL_MIN_VALUES = 1 << 22
# Memory-bound beyond a few cores: more threads only add contention.
MAX_WORKERS = 8
# The largest weight (example count) accepted: no dataset is larger, floats count exactly up to
# it, and any realistic number of such weights still has a finite sum. Two weights of 1e308
# would sum to Inf, make every factor 0 and the mean all zeros, with nothing flagged.
MAX_WEIGHT = float(2**53)


@dataclass(frozen=True)
class Averaged:
    """The weighted mean, and what the one pass learnt about each update."""

    arrays: list[npt.NDArray[np.floating]]
    # Per update; NaN or Inf when the update is non-finite (or its squares overflow).
    # None when the pass was asked not to compute them.
    sq_norms: npt.NDArray[np.float64] | None

    def bad_updates(self) -> list[int]:
        return [i for i, sq in enumerate(self.norms()) if not math.isfinite(sq)]

    def norms(self) -> npt.NDArray[np.float64]:
        """The squared norms; an error to ask for when the pass skipped them."""
        if self.sq_norms is None:
            raise AggregationError("the squared norms were not computed (norms=False)")
        return self.sq_norms


def normalised(weights: Sequence[float]) -> list[float]:
    """``w / sum(w)`` exactly as Flower computes it; refuses weights that would poison the mean.

    Checked once per update, never per value: the GPU kernel shares this, so both paths
    refuse the same weights.
    """
    if not weights:
        raise AggregationError("no updates to aggregate")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float) or not _finite(w) or w <= 0:
            raise AggregationError(f"weights must be finite and positive, got {w!r}")
        if w > MAX_WEIGHT:
            raise AggregationError(f"weight {w:.3g} is above {MAX_WEIGHT:.3g}: no dataset has that many examples")
    total = sum(weights)
    if not math.isfinite(total):  # unreachable within MAX_WEIGHT; a zero model must never pass silently
        raise AggregationError(f"the weights' sum {total} is not finite")
    return [w / total for w in weights]


def _finite(w: float) -> bool:
    try:
        return math.isfinite(w)
    except OverflowError:  # an int too large for a float
        return False


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


def default_workers() -> int:
    """Threads for the CPU kernel: the cores this process may use, at most ``MAX_WORKERS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def resolve_workers(workers: int | None, values: int) -> int:
    """``None``: ``default_workers()`` for a round of at least ``PARALLEL_MIN_VALUES`` values, else 1."""
    if workers is None:
        return default_workers() if values >= PARALLEL_MIN_VALUES else 1
    if workers < 1:
        raise AggregationError(f"workers must be at least 1, got {workers}")
    return workers


@dataclass(frozen=True)
class _Blocks:
    """Values ``start:stop`` of one large layer: the updates are added in one by one."""

    layer: int
    start: int
    stop: int


@dataclass(frozen=True)
class _Stack:
    """Small layers of one accumulator dtype: all updates' copies at once, as one matrix."""

    layers: tuple[int, ...]
    width: int  # their values together


Job = _Blocks | _Stack


def plan(
    sizes: Sequence[int], dtypes: Sequence[np.dtype[np.floating]], updates: int, blocks: Sequence[int]
) -> list[Job]:
    """The jobs of one round: blocks of the large layers (``blocks[j]`` values for layer j),
    then groups of the small ones."""
    jobs: list[Job] = []
    groups: dict[np.dtype[np.floating], list[int]] = {}
    for j, (n, dtype, block) in enumerate(zip(sizes, dtypes, blocks, strict=True)):
        if blocked(updates, n, dtype):
            count = -(-n // block)
            # Even blocks (no sliver at the end), starting on cache-line multiples.
            bounds = sorted({min(n, -(-n * b // count // 64) * 64) for b in range(count)} | {n})
            jobs.extend(_Blocks(j, start, stop) for start, stop in itertools.pairwise(bounds))
            continue
        group = groups.setdefault(dtype, [])
        if group and updates * (sum(sizes[i] for i in group) + n) * dtype.itemsize > STACK_BYTES:
            jobs.append(_Stack(tuple(group), sum(sizes[i] for i in group)))
            group.clear()
        group.append(j)
    jobs.extend(_Stack(tuple(group), sum(sizes[i] for i in group)) for group in groups.values() if group)
    return jobs


def fedavg(
    updates: Sequence[Update],
    weights: Sequence[float],
    *,
    block: int | None = None,
    workers: int | None = None,
    norms: bool = True,
    compiled: bool = True,
) -> Averaged:
    """Weighted mean of ``updates`` (each a list of layers, same layout), with their squared norms.

    Bit-identical to Flower's ``aggregate_arrayrecords`` on the same arrays. ``compiled``:
    large float32/float64 layers run the compiled loop (False: NumPy only, the reference).
    ``workers`` threads share the jobs (``None``: see ``resolve_workers``). ``block``: values
    per block (``None``: ``COMPILED_BLOCK`` compiled, ``DEFAULT_BLOCK`` NumPy). The result
    depends on none of these. ``norms=False`` leaves ``sq_norms`` out (a little less work per
    value, for callers that check nothing).
    """
    factors = normalised(weights)
    layout = check_layout(updates)
    if len(updates) != len(factors):
        raise AggregationError(f"{len(updates)} updates but {len(factors)} weights")
    if block is not None and block <= 0:
        raise AggregationError(f"block must be positive, got {block}")
    sizes = [math.prod(shape) for shape, _ in layout]
    threads = resolve_workers(workers, len(updates) * sum(sizes))
    dtypes = [accumulator_dtype(dtype) for _, dtype in layout]
    flats = [[a.ravel() for a in update] for update in updates]  # views for C-ordered layers
    loop = _compiled_layers(flats, _compilable_layers(layout, len(updates)) if compiled else set(), factors)
    # Blocks sized for the loop that runs them (the NumPy one wants longer ones).
    blocks = [
        block or (COMPILED_BLOCK if loop is not None and loop.holds(j) else DEFAULT_BLOCK) for j in range(len(layout))
    ]
    jobs = plan(sizes, dtypes, len(updates), blocks)
    kernel = _Kernel(
        flats=flats,
        factors=factors,
        outputs=[np.empty(n, dtype=dtype) for n, dtype in zip(sizes, dtypes, strict=True)],
        norms=norms,
        compiled=loop,
    )
    sq = np.zeros(len(updates), dtype=np.float64) if norms else None
    with np.errstate(all="ignore"):  # non-finite updates are reported through sq_norms, not warnings
        pooled = threads > 1 and len(jobs) > 1
        parts: Iterable[npt.NDArray[np.float64] | None] = (
            _pool(threads).map(kernel.run, jobs) if pooled else map(kernel.run, jobs)
        )
        for part in parts:
            if sq is not None and part is not None:
                sq += part
    arrays = [out.reshape(shape) for out, (shape, _) in zip(kernel.outputs, layout, strict=True)]
    return Averaged(arrays, sq)


def blocked(updates: int, size: int, dtype: np.dtype[np.generic]) -> bool:
    """Whether a layer is cut into blocks (its K copies outgrow ``STACK_BYTES``), not stacked."""
    return updates * size * dtype.itemsize > STACK_BYTES


def _compilable_layers(layout: Sequence[tuple[tuple[int, ...], np.dtype[np.generic]]], updates: int) -> set[int]:
    # Layers cut into blocks, float32/float64 in native byte order: what the loop is compiled for.
    return {
        j
        for j, (shape, dtype) in enumerate(layout)
        if blocked(updates, math.prod(shape), dtype)
        and dtype.isnative
        and dtype in (np.dtype(np.float32), np.dtype(np.float64))
    }


def _compiled_layers(flats: Sequence[Update], layers: set[int], factors: Sequence[float]) -> CompiledLayers | None:
    if not layers:
        return None
    try:
        from server.aggregation.compiled import CompiledLayers
    except ImportError as exc:  # Numba missing or broken: the NumPy loop gives the same bits, slower
        _warn_no_numba(exc)
        return None
    return CompiledLayers(flats, sorted(layers), factors)


_WARNED: list[bool] = []


def _warn_no_numba(exc: ImportError) -> None:
    if not _WARNED:
        _WARNED.append(True)
        log.warning("FedAvg runs its NumPy loop only (same result, about 1.5x the time): %s", exc)


@dataclass(frozen=True)
class _Kernel:
    flats: list[list[Layer]]
    factors: list[float]
    outputs: list[npt.NDArray[np.floating]]
    norms: bool
    compiled: CompiledLayers | None

    def run(self, job: Job) -> npt.NDArray[np.float64] | None:
        if isinstance(job, _Stack):
            return self._stack(job)
        if self.compiled is not None and self.compiled.holds(job.layer):
            sq = np.zeros(len(self.flats), dtype=np.float64) if self.norms else None
            self.compiled.weighted_sum(self.outputs[job.layer][job.start : job.stop], job.layer, job.start, sq)
            return sq
        return self._blocks(job)

    def _blocks(self, job: _Blocks) -> npt.NDArray[np.float64] | None:
        acc = self.outputs[job.layer][job.start : job.stop]
        scratch = np.empty_like(acc)
        sq = np.empty(len(self.flats), dtype=np.float64) if self.norms else None
        dtype = acc.dtype.type
        for k, layers in enumerate(self.flats):
            x = layers[job.layer][job.start : job.stop]
            if x.dtype != acc.dtype:  # non-float layer: promote once, here, in cache
                x = x.astype(acc.dtype)
            if k == 0:
                np.multiply(x, dtype(self.factors[k]), out=acc)
            else:
                np.multiply(x, dtype(self.factors[k]), out=scratch)
                np.add(acc, scratch, out=acc)
            if sq is not None:
                xd = x if x.dtype.itemsize >= 4 else x.astype(np.float32)  # float16 squares overflow early
                sq[k] = float(np.dot(xd, xd))
        return sq

    def _stack(self, job: _Stack) -> npt.NDArray[np.float64] | None:
        dtype = self.outputs[job.layers[0]].dtype
        # At least two columns: a (K, 1) reduction would be summed pairwise, not row after row.
        stack = np.empty((len(self.flats), max(job.width, 2)), dtype=dtype)
        stack[:, job.width :] = 0
        offsets = [0]
        for j in job.layers:
            view = stack[:, offsets[-1] : offsets[-1] + self.outputs[j].size]
            np.stack([layers[j] for layers in self.flats], out=view, casting="unsafe")
            offsets.append(offsets[-1] + self.outputs[j].size)
        sq = None
        if self.norms:
            wide = stack if dtype.itemsize >= 4 else stack.astype(np.float32)
            sq = np.einsum("ij,ij->i", wide, wide).astype(np.float64)
        stack *= np.array(self.factors, dtype=dtype)[:, None]
        total = np.add.reduce(stack, axis=0)
        for j, start, stop in zip(job.layers, offsets, offsets[1:], strict=False):
            self.outputs[j][...] = total[start:stop]
        return sq


_POOLS = Pools(lambda workers: ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedavg"))


def _pool(workers: int) -> ThreadPoolExecutor:
    return _POOLS.get(workers)


def update_problems(averaged: Averaged, updates: Sequence[Update], max_norm: float) -> dict[int, str]:
    """Which updates must not count, and why, from the norms the pass computed."""
    problems: dict[int, str] = {}
    for i, sq in enumerate(averaged.norms()):
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
