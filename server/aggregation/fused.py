"""The CPU kernel's default arithmetic for float layers: ``acc += w * x`` in one fused pass, by torch.

NumPy has no axpy. ``acc += w * x`` in NumPy is a product into a scratch block and a sum
into the accumulator: two calls and two passes per block and update, where the memory
traffic only needs one read of ``x``. torch's ``add_(x, alpha=w)`` is one vectorised loop.

The kernel's own threads share the blocks, and torch must not split each call again over its
intra-op (OpenMP) threads. Each split call ends at a barrier, and OpenMP's barriers
spin-wait: with torch splitting every ``add_`` over two threads, a round took 0.37 s
instead of 0.05 s on a busy machine (measured). Teams of torch threads inside the kernel's
threads would also oversubscribe the cores. So the pool here runs torch on one intra-op
thread in each of its threads (``fused_pool``).

The price is the rounding. A fused step rounds once where NumPy's product then sum rounds
twice, so the mean differs from Flower's in the last bits (well inside the 1e-6 that the
tests and benchmarks hold it to). Whoever needs Flower's bits asks ``fedavg(exact=True)``.
The result still depends on nothing but the inputs: each value is summed in update order,
by one thread, whatever the block size or thread count.

torch is imported by whoever uses this module, never by ``server.aggregation.fedavg`` at import
time: a process that only ever aggregates exactly does not pay for torch.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import torch

from server.aggregation.pools import Pools
from server.errors import AggregationError

log = logging.getLogger(__name__)

# How long the pool's threads may take to start (they only set a thread count).
POOL_START_S = 30.0


def fused_pool(workers: int) -> ThreadPoolExecutor:
    """A long-lived pool of ``workers`` threads, each running torch on one intra-op thread."""
    return _POOLS.get(workers)


def _start_pool(workers: int) -> ThreadPoolExecutor:
    """Starts the pool's threads, each with one torch intra-op thread.

    torch keeps the intra-op thread count per thread (OpenMP's ICV, set on a thread's first
    torch call from a process-wide value): each pool thread sets 1 and makes its first call
    while the caller waits at a barrier, then the process-wide value is put back, so the
    caller's thread, and threads started later, keep theirs. Threads that make their first
    torch call during those microseconds would start with one intra-op thread too.
    """
    before = torch.get_num_threads()
    ready = threading.Barrier(workers + 1, timeout=POOL_START_S)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedavg-fused", initializer=_one_thread)
    try:
        # Every submit finds no idle thread (each waits at the barrier), so each starts one.
        started = [pool.submit(ready.wait) for _ in range(workers)]
        ready.wait()
        for future in started:
            future.result()
    except (threading.BrokenBarrierError, RuntimeError) as exc:  # a thread that could not start
        ready.abort()
        pool.shutdown(wait=False, cancel_futures=True)
        raise AggregationError(f"could not start the FedAvg pool of {workers} threads: {exc!r}") from None
    finally:
        torch.set_num_threads(before)
    return pool


_POOLS = Pools(_start_pool)


@contextmanager
def readonly_ok() -> Iterator[None]:
    """Silences torch's warning on tensors over read-only arrays: the updates' bytes are only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        yield


def _one_thread() -> None:
    torch.set_num_threads(1)
    if torch.get_num_threads() != 1:  # pragma: no cover - a torch whose thread count is not per thread
        log.warning("torch runs %d intra-op threads in the FedAvg pool", torch.get_num_threads())


class FusedLayers:
    """torch views of some layers of every update, made once per aggregation (zero-copy)."""

    def __init__(self, flats: Sequence[Sequence[npt.NDArray[np.generic]]], layers: Sequence[int]) -> None:
        # Made here, on the caller's thread: catch_warnings is not thread-safe.
        with readonly_ok():
            self._tensors = {j: [torch.from_numpy(update[j]) for update in flats] for j in layers}

    def holds(self, layer: int) -> bool:
        return layer in self._tensors

    def weighted_sum(
        self,
        out: npt.NDArray[np.floating],
        layer: int,
        start: int,
        factors: Sequence[float],
        sq: npt.NDArray[np.float64] | None,
    ) -> None:
        """``out = sum_k factors[k] * x_k[start:start + len(out)]``; ``sq[k] += |x_k block|^2`` when asked."""
        stop = start + out.size
        acc = torch.from_numpy(out)  # the tensors need no autograd: none of them requires grad
        for k, tensor in enumerate(self._tensors[layer]):
            x = tensor[start:stop]
            if k == 0:
                torch.mul(x, factors[0], out=acc)
            else:
                acc.add_(x, alpha=factors[k])
            if sq is not None:
                sq[k] += float(torch.dot(x, x))
