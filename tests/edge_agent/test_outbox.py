"""The agent's outbox over a real in-memory store (the broker side is a recording publisher),
and the agent's disk-budget check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edge_agent.config import AgentSettings
from edge_agent.outbox import FORGET_AFTER_S, Outbox
from edge_agent.pipeline import CleanRecord
from edge_agent.service import Agent
from edge_agent.store import InMemoryAgentStore, ScoredRecord
from tests.edge_agent.agent_testlib import closed_port_url


class Broker:
    """Records publishes; ``ack`` plays the broker's PUBACK, ``down`` makes publish raise."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Callable[[], None]]] = []
        self.down = False

    def publish(self, topic: str, payload: bytes, on_delivered: Callable[[], None]) -> int:
        if self.down:
            raise OSError("no route")
        self.sent.append((topic, payload, on_delivered))
        return len(self.sent)

    def ack_all(self) -> None:
        sent, self.sent = self.sent, []
        for _, _, cb in sent:
            cb()


def make(max_rows: int = 100) -> tuple[Outbox, InMemoryAgentStore, Broker]:
    store, broker = InMemoryAgentStore(), Broker()
    return Outbox(store, broker.publish, lambda fn: fn(), max_rows=max_rows), store, broker


def test_row_kept_until_ack() -> None:
    outbox, _store, broker = make()
    outbox.send("p", b"1", ["r1"])
    outbox.send("p", b"2", ["r2"])
    assert [m[1] for m in broker.sent] == [b"1", b"2"]
    assert outbox.depth() == 2
    assert outbox.in_flight == 2
    broker.ack_all()
    assert outbox.depth() == 0
    assert outbox.in_flight == 0
    assert outbox.delivered == 2


def test_replay_sends_only_what_paho_does_not_hold() -> None:
    outbox, _store, broker = make()
    outbox.send("p", b"held")
    broker.down = True
    outbox.send("p", b"failed")
    broker.down = False
    assert outbox.depth() == 2
    assert outbox.in_flight == 1
    assert outbox.replay() == 1
    assert [m[1] for m in broker.sent] == [b"held", b"failed"]
    broker.ack_all()
    assert outbox.depth() == 0


def test_new_process_replays_everything_oldest_first() -> None:
    first, store, broker = make()
    broker.down = True
    for i in range(3):
        first.send("p", str(i).encode())
    broker.down = False
    second = Outbox(store, broker.publish, lambda fn: fn(), max_rows=100)  # same store, new process
    assert second.replay() == 3
    assert [m[1] for m in broker.sent] == [b"0", b"1", b"2"]
    broker.ack_all()
    assert second.depth() == 0


def test_full_outbox_drops_oldest_and_counts() -> None:
    outbox, store, broker = make(max_rows=2)
    broker.down = True
    for i in range(5):
        outbox.send("p", str(i).encode())
    assert outbox.dropped == 3
    assert [e.payload for e in store.outbox_pending()] == [b"3", b"4"]


def test_agent_enforces_disk_budget_and_counts_evictions(tmp_path: Path) -> None:
    store = InMemoryAgentStore()
    store.add_records([CleanRecord(f"r{i}", float(i), (1.0,) * 64) for i in range(2000)])
    store.add_predictions(1, [ScoredRecord(f"r{i}", 0.1, False) for i in range(2000)])
    budget_mb = store.disk_usage() / 2 / (1024 * 1024)
    settings = AgentSettings(device_id="d", data_dir=tmp_path, disk_budget_mb=budget_mb, broker_url=closed_port_url())
    agent = Agent(settings, store=store)
    asyncio.run(agent.check_disk_budget())
    assert agent.counters.evicted_records > 0
    assert store.disk_usage() <= settings.disk_budget_mb * 1024 * 1024
    assert store.has_record("r1999")
    assert not store.has_record("r0")


class Timers:
    """The owner's delayed calls, run when the test says the time has come."""

    def __init__(self) -> None:
        self.due: list[tuple[float, Callable[[], None]]] = []

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        self.due.append((delay, fn))

    def run(self) -> None:
        due, self.due = self.due, []
        for _, fn in due:
            fn()


def test_acknowledged_rows_are_deleted_together_later() -> None:
    store, broker, timers = InMemoryAgentStore(), Broker(), Timers()
    outbox = Outbox(store, broker.publish, lambda fn: fn(), max_rows=100, schedule_later=timers.later)
    for i in range(3):
        outbox.send("p", str(i).encode())
    broker.ack_all()
    outbox.send("p", b"3")
    broker.ack_all()
    assert [delay for delay, _ in timers.due] == [FORGET_AFTER_S]  # one deletion for all four
    assert store.outbox_count() == 4  # rows still there...
    assert outbox.depth() == 0  # ...but delivered
    assert outbox.replay() == 0  # and not sent again
    outbox.send("p", b"pending")
    timers.run()
    assert [e.payload for e in store.outbox_pending()] == [b"pending"]
    assert outbox.delivered == 4
    assert outbox.depth() == 1


def test_forget_acked_deletes_what_was_acknowledged_now() -> None:
    store, broker, timers = InMemoryAgentStore(), Broker(), Timers()
    outbox = Outbox(store, broker.publish, lambda fn: fn(), max_rows=100, schedule_later=timers.later)
    outbox.send("p", b"a")
    broker.ack_all()
    outbox.forget_acked()  # the owner stops
    assert store.outbox_count() == 0
    timers.run()  # the timer fires later and finds nothing to do
    assert outbox.delivered == 1
