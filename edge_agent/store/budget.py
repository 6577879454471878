"""Keeping the store inside its disk budget by evicting, oldest first, what was already shipped.

Only data whose value left the device is evicted: records with a delivered prediction (not
referenced by a pending outbox entry), their predictions and labels, and quarantine entries.
Unscored records and undelivered messages are never touched, so an agent that cannot ship
stays over budget (and says so) rather than lose data nobody has seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.store.base import AgentStore

DEFAULT_TARGET_FRACTION = 0.9
DEFAULT_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Eviction:
    records: int = 0
    quarantined: int = 0
    # Still above the target after evicting everything evictable.
    over_budget: bool = False

    @property
    def evicted(self) -> int:
        return self.records + self.quarantined


def over_budget(store: AgentStore, budget_bytes: int) -> bool:
    """The cheap check (file sizes only) run on every period."""
    return store.disk_usage() > budget_bytes


def enforce_budget(
    store: AgentStore,
    budget_bytes: int,
    *,
    target_fraction: float = DEFAULT_TARGET_FRACTION,
    chunk: int = DEFAULT_CHUNK,
) -> Eviction:
    """Evict in chunks (short transactions: the agent keeps writing meanwhile) until live data
    is under ``target_fraction`` of the budget, then compact so the file shrinks too.

    Aiming below the budget, not at it, keeps the check from firing again on the next batch.
    Records and quarantine entries are evicted a chunk of each per round, oldest first.
    """
    if not over_budget(store, budget_bytes):
        return Eviction()
    target = int(budget_bytes * target_fraction)
    records = quarantined = 0
    stuck = False
    while store.live_bytes() > target:
        r = store.evict_shipped(chunk)
        q = store.evict_quarantine(chunk)
        records += r
        quarantined += q
        if r == 0 and q == 0:
            stuck = True
            break
    store.compact()
    return Eviction(records, quarantined, stuck)
