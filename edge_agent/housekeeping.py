"""Background upkeep of the agent: re-sending the outbox after reconnects, and the disk budget.

Both run on the agent's loop at a slow cadence; the eviction itself runs in an executor
thread (the store is thread-safe) so scoring is never held up by a large delete.
"""

from __future__ import annotations

import asyncio
import logging
import time

from edge_agent.config import AgentSettings
from edge_agent.mqtt import AgentLink
from edge_agent.outbox import Outbox
from edge_agent.store import AgentStore
from edge_agent.store.budget import enforce_budget, over_budget
from edge_agent.telemetry import AgentCounters

log = logging.getLogger(__name__)

OUTBOX_SETTLE_S = 2.0


class Housekeeping:
    def __init__(
        self, settings: AgentSettings, store: AgentStore, link: AgentLink, outbox: Outbox, counters: AgentCounters
    ) -> None:
        self.settings = settings
        self.store = store
        self.link = link
        self.outbox = outbox
        self.counters = counters
        self._connects_seen = 0

    def resend_after_start(self) -> None:
        """What an earlier run scored but the broker never acknowledged goes out first."""
        self._connects_seen = self.link.connects
        self.replay_outbox()

    async def run(self) -> None:
        """Re-send the outbox after a reconnect (checked each second) and enforce the disk budget."""
        last_check = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.settings.disk_check_s))
            connects = self.link.connects
            if connects != self._connects_seen:
                self._connects_seen = connects
                self.replay_outbox()
            if time.monotonic() - last_check >= self.settings.disk_check_s:
                last_check = time.monotonic()
                await self.check_disk_budget()

    def replay_outbox(self) -> None:
        try:
            self.outbox.replay()
        except Exception:
            log.exception("re-sending the outbox failed")

    async def settle_outbox(self) -> None:
        """Give in-flight outbox messages a moment to be acked, so a clean stop leaves no duplicates."""
        if not self.link.connected:
            return
        idle = asyncio.Event()
        self.outbox.on_idle = idle.set
        try:
            if self.outbox.in_flight:
                async with asyncio.timeout(OUTBOX_SETTLE_S):
                    await idle.wait()
        except TimeoutError:
            log.info("%d outbox messages unacknowledged at stop: sent again on next start", self.outbox.in_flight)
        finally:
            self.outbox.on_idle = None

    async def check_disk_budget(self) -> None:
        """Evict shipped data when the store is over ``disk_budget_mb`` (off the loop thread)."""
        budget = int(self.settings.disk_budget_mb * 1024 * 1024)
        try:
            if not over_budget(self.store, budget):
                return
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(None, enforce_budget, self.store, budget)
        except Exception:
            log.exception("enforcing the disk budget failed")
            return
        self.counters.evicted_records += done.records
        self.counters.evicted_quarantine += done.quarantined
        if done.evicted:
            log.warning(
                "store over its %.0f MB budget: evicted %d shipped records and %d quarantine entries",
                self.settings.disk_budget_mb,
                done.records,
                done.quarantined,
            )
        if done.over_budget:
            log.warning(
                "store still over its %.0f MB budget: nothing left that was shipped (%d undelivered messages)",
                self.settings.disk_budget_mb,
                self.outbox.depth(),
            )
