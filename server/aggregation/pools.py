"""The CPU kernel's long-lived thread pools: one per size, started once, forgotten in a forked child.

Starting threads on every call costs more than a small round's arithmetic, so the CPU
kernel keeps its pools for the life of the process. A forked child inherits the dict of
pools but none of their threads: a pool's ``map`` there would queue jobs that no thread
ever runs, and the aggregation would hang. So the registry forgets its pools (and its lock,
which another thread may have held at the fork) in the child, which starts its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class Pools:
    """Pools by size; ``start(workers)`` makes a missing one (and may raise: nothing is kept)."""

    def __init__(self, start: Callable[[int], ThreadPoolExecutor]) -> None:
        self._start = start
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # POSIX
            os.register_at_fork(after_in_child=self._forget)

    def get(self, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            pool = self._pools.get(workers)
            if pool is None:
                pool = self._pools[workers] = self._start(workers)
            return pool

    def _forget(self) -> None:
        self._pools = {}
        self._lock = threading.Lock()
