"""The registry: records + the ``Registry`` interface, an in-memory and an SQL implementation.

``SqlRegistry`` and ``migrate`` live in ``server.registry.sql`` / ``server.registry.migrate``
so importing the records does not pull in SQLAlchemy.
"""

from server.registry.memory import InMemoryRegistry
from server.registry.records import (
    AuditEntry,
    DeviceRecord,
    ModelVersionRecord,
    Registry,
    RoundRecord,
    RunRecord,
    RunStatus,
    Stage,
)

__all__ = [
    "AuditEntry",
    "DeviceRecord",
    "InMemoryRegistry",
    "ModelVersionRecord",
    "Registry",
    "RoundRecord",
    "RunRecord",
    "RunStatus",
    "Stage",
]
