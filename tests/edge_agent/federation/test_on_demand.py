"""On-demand federation: the decision (pure) and the companion's handling of call payloads.

The SuperNode itself is started and stopped for real in tests/e2e/test_on_demand.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import pytest

from edge_agent.config import AgentSettings
from edge_agent.federation.on_demand import FederationDemand, OnDemandCompanion, SupervisedNode
from shared import topics
from shared.commands import federation_call
from shared.schemas import FederationCall
from shared.signing import TrustStore
from tests.edge_agent.conftest import Keys

FLEET = "f1"


def call(
    keys: Keys, state: Literal["open", "ended"] = "open", *, run_id: str = "run-1", now: float = 1000.0, ttl: float = 60
) -> FederationCall:
    return federation_call(keys.private, run_id=run_id, fleet=FLEET, state=state, ttl_s=ttl, now=now)


# -- the decision ------------------------------------------------------------------------------


def test_an_open_call_starts_the_node_once(operator_keys: Keys) -> None:
    demand = FederationDemand(idle_stop_s=10)
    assert demand.decide(1000.0, running=False) is None
    assert demand.offer(call(operator_keys)) is None
    assert demand.decide(1001.0, running=False) == "start"
    assert demand.decide(1002.0, running=True) is None


def test_the_node_stops_once_the_run_ended_and_the_idle_time_passed(operator_keys: Keys) -> None:
    demand = FederationDemand(idle_stop_s=10)
    demand.offer(call(operator_keys))
    demand.offer(call(operator_keys, "ended", now=1020.0))
    assert demand.decide(1021.0, running=True) is None  # idle from here
    assert demand.decide(1030.0, running=True) is None
    assert demand.decide(1031.0, running=True) == "stop"
    assert demand.decide(1032.0, running=False) is None


def test_a_new_call_during_the_idle_time_keeps_the_node(operator_keys: Keys) -> None:
    demand = FederationDemand(idle_stop_s=10)
    demand.offer(call(operator_keys, "ended", now=1000.0))
    assert demand.decide(1001.0, running=True) is None
    demand.offer(call(operator_keys, run_id="run-2", now=1005.0))
    assert demand.decide(1020.0, running=True) is None
    demand.offer(call(operator_keys, "ended", run_id="run-2", now=1030.0))
    assert demand.decide(1031.0, running=True) is None  # the idle time starts again
    assert demand.decide(1041.0, running=True) == "stop"


def test_an_expired_call_neither_starts_nor_keeps_a_node(operator_keys: Keys) -> None:
    demand = FederationDemand(idle_stop_s=0)
    demand.offer(call(operator_keys, ttl=60))
    assert demand.decide(1060.0, running=False) is None
    assert demand.decide(1059.0, running=False) == "start"
    assert demand.decide(1061.0, running=True) == "stop"  # its ServerApp never ended it


def test_a_cleared_call_stops_the_node(operator_keys: Keys) -> None:
    demand = FederationDemand(idle_stop_s=0)
    demand.offer(call(operator_keys))
    demand.clear()
    assert demand.decide(1001.0, running=True) == "stop"


def test_an_older_call_does_not_replace_the_one_held(operator_keys: Keys) -> None:
    demand = FederationDemand(idle_stop_s=0)
    demand.offer(call(operator_keys, "ended", now=1010.0))
    reason = demand.offer(call(operator_keys, now=1000.0, ttl=3600))  # a replayed open call
    assert reason is not None
    assert "older" in reason
    assert demand.decide(1011.0, running=False) is None


# -- call payloads ------------------------------------------------------------------------------


class Node:
    """Stands in for SuperNodeCompanion: records what the companion asked of it."""

    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log = log
        self.fail = fail

    async def start(self) -> None:
        self.log.append("start")
        if self.fail:
            raise OSError("no flower-supernode here")

    async def stop(self) -> None:
        self.log.append("stop")


def companion(
    tmp_path: Path, keys: Keys, log: list[str], *, fail: bool = False, clock: float = 1000.0
) -> OnDemandCompanion:
    settings = AgentSettings(device_id="d1", fleet=FLEET, data_dir=tmp_path, federation_idle_stop_s=0)
    subscribed: list[str] = []

    def factory() -> SupervisedNode:
        return Node(log, fail)

    c = OnDemandCompanion(
        settings,
        TrustStore.from_files([keys.public_path]),
        lambda topic, handler: subscribed.append(topic),
        node_factory=factory,
        tick_s=0.01,
        clock=lambda: clock,
    )
    assert c.topic == topics.federation_call(FLEET)
    return c


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid FederationCall"),
        (b'{"run_id": "r", "fleet": "f1", "state": "go"}', "invalid FederationCall"),
        (b"\xff" * 10, "invalid FederationCall"),
    ],
)
def test_a_malformed_call_is_refused_with_its_reason(
    tmp_path: Path, operator_keys: Keys, payload: bytes, reason: str
) -> None:
    c = companion(tmp_path, operator_keys, [])
    c.receive(payload)
    assert reason in c.rejections[-1]
    assert c.demand.call is None


def test_an_unsigned_forged_or_foreign_call_is_refused(tmp_path: Path, operator_keys: Keys, rogue_keys: Keys) -> None:
    c = companion(tmp_path, operator_keys, [])
    good = call(operator_keys)
    c.receive(good.model_copy(update={"signature": ""}).to_bytes())
    c.receive(call(rogue_keys).to_bytes())
    c.receive(good.model_copy(update={"expires_at": good.expires_at + 86400}).to_bytes())  # tampered
    other_fleet = federation_call(operator_keys.private, run_id="r", fleet="f2", state="open", ttl_s=60, now=1000.0)
    c.receive(other_fleet.to_bytes())
    assert len(c.rejections) == 4
    assert "not signed" in c.rejections[0]
    assert "not a trusted operator key" in c.rejections[1]
    assert "does not match" in c.rejections[2]
    assert "fleet f2" in c.rejections[3]
    assert c.demand.call is None
    c.receive(good.to_bytes())
    assert c.demand.call == good


async def until(log: list[str], expected: list[str]) -> None:
    """Yield to the companion's task until ``log`` reads ``expected`` (bounded, not timed)."""
    for _ in range(1000):
        if log == expected:
            return
        await asyncio.sleep(0.01)
    assert log == expected


def test_the_companion_starts_and_stops_the_node_with_the_call(tmp_path: Path, operator_keys: Keys) -> None:
    log: list[str] = []

    async def scenario() -> None:
        c = companion(tmp_path, operator_keys, log)
        await c.start()
        await asyncio.sleep(0.05)
        assert (log, c.running) == ([], False)
        c.receive(call(operator_keys).to_bytes())
        await until(log, ["start"])
        assert c.running
        c.receive(call(operator_keys, "ended", now=1000.5).to_bytes())
        await until(log, ["start", "stop"])
        assert not c.running
        c.receive(call(operator_keys, run_id="run-2", now=1000.7).to_bytes())
        await until(log, ["start", "stop", "start"])
        await c.stop()  # the agent stops: so does a running node
        assert (log, c.starts) == (["start", "stop", "start", "stop"], 2)

    asyncio.run(scenario())


def test_a_node_that_fails_to_start_does_not_stop_the_agent(tmp_path: Path, operator_keys: Keys) -> None:
    log: list[str] = []

    async def scenario() -> None:
        c = companion(tmp_path, operator_keys, log, fail=True)
        await c.start()
        c.receive(call(operator_keys).to_bytes())
        await until(log, ["start", "stop"])
        await asyncio.sleep(0.1)
        # One try, cleaned up, and no retry before RETRY_START_S.
        assert (log, c.running, c.starts) == (["start", "stop"], False, 0)
        await c.stop()

    asyncio.run(scenario())
