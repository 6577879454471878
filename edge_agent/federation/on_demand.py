"""On-demand federation: the SuperNode runs only while the server calls the fleet to a training run.

With ``federation_mode = "always"`` the agent's SuperNode and its ClientApp worker run for
as long as the agent (~140 MB beside a ~105 MB agent) and poll the SuperLink every 3 s,
though a fleet may train once a day. With ``"on_demand"`` the agent follows the fleet's
retained federation call (shared.schemas.FederationCall, on ``topics.federation_call``):
a verified, open, unexpired call starts the supervisor of ``edge_agent.federation.supernode``
(unchanged: one ``SuperNodeCompanion`` per call-up, since a stopped ManagedProcess does not
start again), and once no open call needs it for ``federation_idle_stop_s`` (the run ended,
or its call expired because its ServerApp died) the whole SuperNode tree is stopped.

``FederationDemand`` is the decision alone (calls and a clock in, start/stop out), so it is
tested without a broker or a SuperNode. A call that does not decode, is not signed by a
trusted operator key, is for another fleet or is older than the call held is refused with
its reason (logged, kept in ``rejections``); nothing in a payload can stop the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from edge_agent.config import AgentSettings
from shared import topics
from shared.commands import verify_federation_call
from shared.errors import FedforgeError
from shared.schemas import FederationCall, decode
from shared.signing import TrustStore

log = logging.getLogger(__name__)

Action = Literal["start", "stop"]
MessageHandler = Callable[[str, bytes, bool], None]
Subscribe = Callable[[str, MessageHandler], None]

# How often the expiry and the idle time are looked at when no call arrives.
TICK_S = 1.0
# After a SuperNode failed to start (a bad binary, a full disk), the next try waits this long.
RETRY_START_S = 30.0


@dataclass
class FederationDemand:
    """Whether the SuperNode should run now, from the latest call and the clock."""

    idle_stop_s: float
    call: FederationCall | None = None
    idle_since: float | None = None

    def offer(self, call: FederationCall) -> str | None:
        """Hold a verified call; returns why it is ignored instead (older than the call held)."""
        held = self.call
        if held is not None and call.issued_at < held.issued_at:
            return f"call for run {call.run_id} is older than the call held (run {held.run_id})"
        self.call = call
        return None

    def clear(self) -> None:
        """The retained call was removed: no run stands."""
        self.call = None

    def needed(self, now: float) -> bool:
        call = self.call
        return call is not None and call.state == "open" and now < call.expires_at

    def decide(self, now: float, running: bool) -> Action | None:
        if self.needed(now):
            self.idle_since = None
            return None if running else "start"
        if not running:
            self.idle_since = None
            return None
        if self.idle_since is None:
            self.idle_since = now
        return "stop" if now - self.idle_since >= self.idle_stop_s else None


class SupervisedNode(Protocol):
    """What ``SuperNodeCompanion`` offers: start and stop its whole process tree."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def supernode_factory(settings: AgentSettings) -> Callable[[], SupervisedNode]:
    def make() -> SupervisedNode:
        from edge_agent.federation.supernode import SuperNodeCompanion

        return SuperNodeCompanion(settings)

    return make


class OnDemandCompanion:
    """Agent companion: follows the federation call and starts/stops the SuperNode companion."""

    def __init__(
        self,
        settings: AgentSettings,
        trust: TrustStore,
        subscribe: Subscribe,
        *,
        node_factory: Callable[[], SupervisedNode] | None = None,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = settings.fleet
        self.topic = topics.federation_call(settings.fleet)
        self.trust = trust
        self.demand = FederationDemand(settings.federation_idle_stop_s)
        self.node: SupervisedNode | None = None
        self.starts = 0
        self.rejections: deque[str] = deque(maxlen=20)
        self._subscribe = subscribe
        self._factory = node_factory or supernode_factory(settings)
        self._tick_s = tick_s
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.node is not None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="federation-on-demand")
        self._subscribe(self.topic, self._on_message)  # the retained call arrives at once
        log.info("federation on demand: the SuperNode starts when %s calls", self.topic)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._stop_node()

    # -- calls (paho thread -> loop) ---------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(self.receive, payload)

    def receive(self, payload: bytes) -> None:
        """Take one payload of the call topic (loop thread); a bad one is refused, never raised."""
        try:
            self._receive(payload)
        except Exception as exc:
            log.exception("federation call not handled")
            self._reject(f"internal error: {exc!r}"[:500])
        self._wake.set()

    def _receive(self, payload: bytes) -> None:
        if not payload:
            self.demand.clear()
            log.info("federation call cleared")
            return
        try:
            call = decode(FederationCall, payload)
            verify_federation_call(call, self.trust, fleet=self.fleet)
        except FedforgeError as exc:
            self._reject(str(exc))
            return
        reason = self.demand.offer(call)
        if reason is not None:
            self._reject(reason)
            return
        left = call.expires_at - self._clock()
        if call.state == "open" and left <= 0:
            log.info("federation call for run %s expired %.0f s ago: not joining", call.run_id, -left)
        else:
            log.info("federation call: run %s %s", call.run_id, call.state)

    def _reject(self, reason: str) -> None:
        log.warning("refused a federation call: %s", reason)
        self.rejections.append(reason)

    # -- the SuperNode -----------------------------------------------------------------------

    async def _run(self) -> None:
        retry_at = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick_s)
            self._wake.clear()
            now = self._clock()
            action = self.demand.decide(now, self.running)
            if action == "start" and now >= retry_at and not await self._start_node():
                retry_at = now + RETRY_START_S
            elif action == "stop":
                log.info("no training run needs the SuperNode: stopping it")
                await self._stop_node()

    async def _start_node(self) -> bool:
        call = self.demand.call
        log.info("starting the SuperNode for run %s", call.run_id if call else "?")
        try:
            self.node = self._factory()
            await self.node.start()
        except Exception:
            log.exception("the SuperNode did not start; retrying in %.0f s", RETRY_START_S)
            await self._stop_node()
            return False
        self.starts += 1
        return True

    async def _stop_node(self) -> None:
        node = self.node
        if node is None:
            return
        try:
            await node.stop()
        except Exception:
            log.exception("stopping the SuperNode failed")
        self.node = None
