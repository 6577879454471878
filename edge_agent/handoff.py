"""The hand-off from paho's network thread to the agent's asyncio loop.

Waking an asyncio loop from another thread is a write to its self-pipe (a syscall, and on a
loaded device a context switch); once per message it cost more than cleaning the message.
Here messages go into a deque (``append`` and ``popleft`` are thread-safe) and the loop is
woken only when it may be asleep: at most one wake-up is in flight, and the consumer takes
everything that arrived meanwhile as one batch. The deque is bounded: when the loop falls
behind, paho's thread waits (and with it the broker's in-flight window) instead of dropping
messages; closing the hand-off releases a waiting producer.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

# How often a producer blocked on a full hand-off re-checks whether it was closed.
_POLL_S = 0.5


class Handoff(Generic[T]):
    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = max(1, limit)
        self._space = threading.Event()
        self._space.set()
        self._closed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._wake_scheduled = False

    def __len__(self) -> int:
        return len(self._items)

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver to ``loop`` from now on (call on that loop's thread)."""
        self._loop = loop
        self._ready = asyncio.Event()
        self._wake_scheduled = False
        self._closed.clear()

    def close(self) -> None:
        """Refuse new items; a producer waiting for space gives up."""
        self._closed.set()
        self._space.set()

    def put(self, item: T) -> bool:
        """From any thread: queue ``item``, waiting while full; False if closed (not queued)."""
        while len(self._items) >= self._limit:
            self._space.clear()
            if len(self._items) < self._limit:  # the consumer made room between the check and the clear
                break
            if self._closed.is_set():
                return False
            self._space.wait(_POLL_S)
        loop = self._loop
        if loop is None or self._closed.is_set() or loop.is_closed():
            return False
        self._items.append(item)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop closed between the check and the call
                return False
        return True

    def _wake(self) -> None:
        # Reset before setting: an item appended after this line schedules a new wake-up,
        # one appended before it is seen by the consumer this wake-up releases.
        self._wake_scheduled = False
        if self._ready is not None:
            self._ready.set()

    async def get(self, max_items: int) -> list[T]:
        """On the loop: wait for at least one item, then take up to ``max_items``."""
        ready = self._ready
        if ready is None:
            raise RuntimeError("Handoff.get before open")
        while not self._items:
            ready.clear()
            if self._items:
                break
            await ready.wait()
        return self.take(max_items)

    def take(self, max_items: int | None = None) -> list[T]:
        """Whatever is queued now (up to ``max_items``), without waiting."""
        items = self._items
        count = len(items) if max_items is None else min(max_items, len(items))
        taken = [items.popleft() for _ in range(count)]
        if taken and not self._space.is_set():
            self._space.set()
        return taken
