"""An index that makes Flower's in-memory LinkState linear in the number of virtual nodes.

Measured here (flwr 1.42.0): the Simulation Engine's dispatcher asks the LinkState, every
0.1 s, for the next message of EACH virtual node, and ``InMemoryLinkState.get_message_ins``
answers by scanning EVERY stored message (with an expiry check per message). A round of N
nodes therefore costs O(N²): 1,000 virtual devices took 136-306 s per round on 2 cores,
nearly all of it in that scan. While the twin runs, ``store_message_ins`` also files each
message under its destination node and ``get_message_ins`` pops from that node's queue,
with the same checks on the messages it returns. Flower is pinned exactly (1.42.0) and
the twin's tests run through this path, so a Flower change that breaks it fails them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

_PENDING = "_fedforge_pending"
_patch_lock = threading.Lock()


def _store_message_ins(original: Any) -> Any:
    def store_message_ins(self: InMemoryLinkState, message: Any) -> str | None:
        message_id: str | None = original(self, message)
        if message_id is not None:
            with self.lock:
                pending: dict[int, deque[str]] = self.__dict__.setdefault(_PENDING, {})
                pending.setdefault(int(message.metadata.dst_node_id), deque()).append(str(message_id))
        return message_id

    return store_message_ins


def _get_message_ins(original: Any) -> Any:
    def get_message_ins(
        self: InMemoryLinkState, node_id: int, limit: int | None, *, run_id: int | None = None
    ) -> list[Any]:
        pending: dict[int, deque[str]] | None = self.__dict__.get(_PENDING)
        if pending is None:
            return list(original(self, node_id, limit, run_id=run_id))
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        found: list[Any] = []
        with self.lock:
            queue = pending.get(int(node_id))
            kept: list[str] = []
            while queue and (limit is None or len(found) < limit):
                message_id = queue.popleft()
                self._check_stored_messages({message_id})  # expiry and federation, as Flower does
                message = self.message_ins_store.get(message_id)
                if message is None or message.metadata.delivered_at != "":
                    continue
                if run_id is not None and message.metadata.run_id != run_id:
                    kept.append(message_id)
                    continue
                found.append(message)
            if queue is not None and kept:
                queue.extendleft(reversed(kept))
        delivered_at = now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
        return found

    return get_message_ins


@contextmanager
def indexed_link_state() -> Iterator[None]:
    """Index Flower's in-memory LinkState by destination node while the block runs."""
    with _patch_lock:
        store, get = InMemoryLinkState.store_message_ins, InMemoryLinkState.get_message_ins
        InMemoryLinkState.store_message_ins = _store_message_ins(store)  # type: ignore[method-assign]
        InMemoryLinkState.get_message_ins = _get_message_ins(get)  # type: ignore[method-assign]
        try:
            yield
        finally:
            InMemoryLinkState.store_message_ins = store  # type: ignore[method-assign]
            InMemoryLinkState.get_message_ins = get  # type: ignore[method-assign]
