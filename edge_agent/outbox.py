"""Durable delivery of the agent's QoS 1 messages that matter (prediction batches).

paho's outgoing queue lives in memory: a crash or restart loses whatever the broker has not
acknowledged. So a message is written to the store's outbox first, published, and deleted
only when the broker's PUBACK arrives. On start, and after a reconnect, what is still in the
outbox and not already handed to paho by this process is published again; consumers see
at-least-once delivery, which is harmless because predictions carry record ids.

Everything here runs on the agent's asyncio loop thread: the ack callback (paho's network
thread) only schedules ``_acked`` with ``call_soon``, never touches the store itself.

Acknowledged rows are deleted together, ``FORGET_AFTER_S`` after the first of them: while
ingest streams, a delete transaction after every read cost about 5 % of the agent's loop
(figure 3b). Until then they are neither counted in ``depth`` nor sent again by ``replay``;
a crash in that second sends them again on the next start, which at-least-once allows. The
owner calls ``forget_acked`` when it stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from edge_agent.store import AgentStore

log = logging.getLogger(__name__)

REPLAY_PAGE = 500
# Seconds from the first acknowledgement of a batch to the deletion of the acknowledged rows.
FORGET_AFTER_S = 1.0


class Publisher(Protocol):
    def __call__(self, topic: str, payload: bytes, on_delivered: Callable[[], None]) -> int: ...


Scheduler = Callable[[Callable[[], None]], None]
"""Runs a callable on the owner's thread; must be safe to call from any thread."""

LaterScheduler = Callable[[float, Callable[[], None]], None]
"""Runs a callable on the owner's thread after a delay; called on the owner's thread."""


class Outbox:
    def __init__(
        self,
        store: AgentStore,
        publish: Publisher,
        schedule: Scheduler,
        *,
        max_rows: int,
        schedule_later: LaterScheduler | None = None,
    ) -> None:
        """Without ``schedule_later`` acknowledged rows are deleted as soon as ``schedule`` runs it."""
        self.store = store
        self._publish = publish
        self._schedule = schedule
        self._schedule_later = schedule_later
        self.max_rows = max_rows
        self._in_flight: set[int] = set()  # entry ids handed to paho by this process, not yet acked
        self.dropped = 0  # undelivered messages given up on because the outbox was full
        self.delivered = 0
        self._acked_ids: set[int] = set()  # acknowledged, their rows not deleted yet
        # Called (on the owner's thread) when the last in-flight message is acked.
        self.on_idle: Callable[[], None] | None = None

    def send(self, topic: str, payload: bytes, record_ids: Sequence[str] = ()) -> None:
        """Write, then publish."""
        self.write(topic, payload, record_ids)()

    def write(self, topic: str, payload: bytes, record_ids: Sequence[str] = ()) -> Callable[[], None]:
        """Write the entry; returns the publish step, for a caller that first commits the
        entry together with other writes (``AgentStore.atomic``). A failed write (disk full)
        degrades to a plain publish: a late prediction kept in paho's memory is better than none."""
        try:
            entry_id, dropped = self.store.outbox_add(topic, payload, record_ids, max_rows=self.max_rows)
        except Exception:
            log.exception("outbox write failed; publishing %s without durability", topic)
            return lambda: self._plain(topic, payload)
        if dropped:
            self.dropped += dropped
            log.warning("outbox full (%d rows): dropped the %d oldest undelivered messages", self.max_rows, dropped)
        return lambda: self._send(entry_id, topic, payload)

    def _plain(self, topic: str, payload: bytes) -> None:
        try:
            self._publish(topic, payload, _nothing)
        except Exception:
            log.exception("publishing %s failed", topic)

    def replay(self) -> int:
        """Publish pending entries not already in paho's hands; returns how many."""
        sent = 0
        after = 0
        while True:
            page = self.store.outbox_pending(REPLAY_PAGE, after_id=after)
            for entry in page:
                if entry.id not in self._in_flight and entry.id not in self._acked_ids:
                    self._send(entry.id, entry.topic, entry.payload)
                    sent += 1
            if len(page) < REPLAY_PAGE:
                break
            after = page[-1].id
        if sent:
            log.info("re-published %d undelivered outbox messages", sent)
        return sent

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def depth(self) -> int:
        """Messages not delivered yet."""
        return max(0, self.store.outbox_count() - len(self._acked_ids))

    def _send(self, entry_id: int, topic: str, payload: bytes) -> None:
        try:
            self._publish(topic, payload, lambda: self._schedule(lambda: self._acked(entry_id)))
        except Exception:
            # Stays in the outbox: retried after the next reconnect or restart.
            log.exception("publishing outbox entry %d to %s failed", entry_id, topic)
            return
        self._in_flight.add(entry_id)

    def _acked(self, entry_id: int) -> None:
        self._in_flight.discard(entry_id)
        if not self._in_flight and self.on_idle is not None:
            self.on_idle()
        # Rows are deleted in batches (module docstring): one transaction for many acks.
        self._acked_ids.add(entry_id)
        if len(self._acked_ids) == 1:
            if self._schedule_later is None:
                self._schedule(self.forget_acked)
            else:
                self._schedule_later(FORGET_AFTER_S, self.forget_acked)

    def forget_acked(self) -> None:
        """Delete the rows of the messages acknowledged so far."""
        if not self._acked_ids:
            return
        ids, self._acked_ids = sorted(self._acked_ids), set()
        try:
            self.delivered += self.store.outbox_delete_many(ids)
        except Exception:
            log.exception("could not delete %d delivered outbox entries (they will be sent again)", len(ids))


def _nothing() -> None:
    """Delivery of a message that has no outbox row needs no bookkeeping."""
