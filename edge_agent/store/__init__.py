"""The agent's local store: records, predictions, labels, quarantine, model history, training."""

from edge_agent.store.base import (
    AgentStore,
    BatchScores,
    ModelEvent,
    ModelEventKind,
    OutboxEntry,
    QuarantineEntry,
    ScoredRecord,
    StoreError,
    StoreUnavailableError,
)
from edge_agent.store.memory import InMemoryAgentStore
from edge_agent.store.sqlite import SqliteAgentStore

__all__ = [
    "AgentStore",
    "BatchScores",
    "InMemoryAgentStore",
    "ModelEvent",
    "ModelEventKind",
    "OutboxEntry",
    "QuarantineEntry",
    "ScoredRecord",
    "SqliteAgentStore",
    "StoreError",
    "StoreUnavailableError",
]
