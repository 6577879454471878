"""The agent's local store: records, predictions, labels, quarantine, model history, training."""

from edge_agent.store.base import (
    AgentStore,
    ModelEvent,
    ModelEventKind,
    OutboxEntry,
    QuarantineEntry,
    ScoredRecord,
    StoreError,
)
from edge_agent.store.memory import InMemoryAgentStore
from edge_agent.store.sqlite import SqliteAgentStore

__all__ = [
    "AgentStore",
    "InMemoryAgentStore",
    "ModelEvent",
    "ModelEventKind",
    "OutboxEntry",
    "QuarantineEntry",
    "ScoredRecord",
    "SqliteAgentStore",
    "StoreError",
]
