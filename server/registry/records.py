"""What the registry stores, as plain frozen dataclasses, and the ``Registry`` interface.

Records are independent of SQLAlchemy so the API, the release pipeline and the ServerApp
can be tested against ``InMemoryRegistry`` and run against ``SqlRegistry`` unchanged.
Times are epoch seconds (floats), as on the wire.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from shared.schemas import DeviceStatus

# withdrawn: was published, then an operator rolled the fleet back past it.
Stage = Literal["candidate", "published", "rejected", "withdrawn"]
RunStatus = Literal["running", "succeeded", "failed"]
STAGES: tuple[str, ...] = get_args(Stage)
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    fleet: str
    last_seen: float
    serving_version: int | None
    status: str  # the DeviceStatus kind: birth | heartbeat | offline
    health: str
    counters: dict[str, int]
    signature_verified: bool
    last_rejection: dict[str, Any] | None
    queue_depth: int = 0
    scoring_latency_ms_p50: float | None = None
    public_key: str | None = None
    # Revoked by an operator: its status is no longer followed (server.actions).
    revoked: bool = False
    # Held at this version by an operator's pin, as the device last reported it.
    pinned_version: int | None = None

    def online(self, now: float, window_s: float) -> bool:
        """Online = said it is alive, and said so recently (a lost will is not fatal)."""
        return self.status != "offline" and now - self.last_seen <= window_s


@dataclass(frozen=True)
class ModelVersionRecord:
    """One model version; the ONNX bytes are fetched separately with ``get_artifact``."""

    task: str
    version: int
    parent_version: int | None
    training_run_id: str | None
    created: float
    metrics: dict[str, float]
    sha256: str
    size: int
    signer: str
    signature: str
    manifest: dict[str, Any]
    stage: Stage


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    flower_run_id: str | None
    status: RunStatus
    rounds: int
    started: float
    finished: float | None = None
    error: str | None = None
    published_version: int | None = None
    strategy: str | None = None  # None for runs recorded before revision 0005


@dataclass(frozen=True)
class RoundRecord:
    run_id: str
    round: int
    participants: int
    failures: int
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class CommandRecord:
    """A command the cloud sent to the fleet (the signed payload as published)."""

    command_id: str
    fleet: str
    task: str
    kind: str
    version: int | None
    issued_at: float
    expires_at: float
    issued_by: str
    payload: dict[str, Any]

    @property
    def device_id(self) -> str | None:
        """The one device a pin, unpin or config is for; None for a fleet command."""
        device = self.payload.get("device_id")
        return device if isinstance(device, str) else None


@dataclass(frozen=True)
class AckRecord:
    """A device's answer to a command; the latest answer per (command, device) is kept."""

    command_id: str
    device_id: str
    accepted: bool
    reason: str
    serving_version: int | None
    at: float


def device_record_from_status(
    status: DeviceStatus, received_at: float, retained: bool, public_key: str | None = None
) -> DeviceRecord:
    """A retained status may be old (replayed on reconnect): trust its own timestamp then."""
    last_seen = min(status.ts, received_at) if retained else received_at
    return DeviceRecord(
        device_id=status.device_id,
        fleet=status.fleet,
        last_seen=last_seen,
        serving_version=status.model_version,
        status=status.kind,
        health=status.health,
        counters=status.counters.model_dump(),
        signature_verified=status.signature_verified,
        last_rejection=None if status.last_rejection is None else status.last_rejection.model_dump(),
        queue_depth=status.queue_depth,
        scoring_latency_ms_p50=status.scoring_latency_ms_p50,
        public_key=public_key,
        pinned_version=status.pinned_version,
    )


class Registry(Protocol):
    """The cloud's system of record: fleet state, model lineage, training runs, audit."""

    # -- devices ------------------------------------------------------------------
    def upsert_device_status(self, status: DeviceStatus, *, received_at: float, retained: bool = False) -> None: ...

    def get_device(self, device_id: str) -> DeviceRecord | None: ...

    def list_devices(self, fleet: str | None = None) -> list[DeviceRecord]: ...

    def set_device_revoked(self, device_id: str, revoked: bool) -> DeviceRecord:
        """Raises ``NotFoundError`` for an unknown device."""
        ...

    # -- model versions -----------------------------------------------------------
    def next_version(self, task: str) -> int: ...

    def add_model_version(self, record: ModelVersionRecord, artifact: bytes) -> None:
        """Raises ``RegistryError`` if (task, version) already exists."""
        ...

    def get_model_version(self, task: str, version: int) -> ModelVersionRecord | None: ...

    def get_artifact(self, task: str, version: int) -> bytes | None: ...

    def latest_published(self, task: str) -> ModelVersionRecord | None: ...

    def list_model_versions(self, task: str) -> list[ModelVersionRecord]:
        """Newest first."""
        ...

    def set_stage(self, task: str, version: int, stage: Stage) -> None:
        """Raises ``NotFoundError`` for an unknown version."""
        ...

    # -- training runs ------------------------------------------------------------
    def start_run(
        self,
        run_id: str,
        rounds: int,
        *,
        flower_run_id: str | int | None = None,
        started: float,
        strategy: str | None = None,
    ) -> RunRecord: ...

    def set_flower_run_id(self, run_id: str, flower_run_id: str | int) -> None: ...

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        finished: float,
        error: str | None = None,
        published_version: int | None = None,
    ) -> None: ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def list_runs(self) -> list[RunRecord]:
        """Newest first."""
        ...

    def add_round(self, record: RoundRecord) -> None:
        """Idempotent per (run_id, round): a retried write replaces the earlier one."""
        ...

    def list_rounds(self, run_id: str | None = None) -> list[RoundRecord]: ...

    # -- fleet commands and acknowledgements ---------------------------------------
    def add_command(self, record: CommandRecord) -> None: ...

    def list_commands(
        self, fleet: str | None = None, limit: int = 100, *, kind: str | None = None, device_id: str | None = None
    ) -> list[CommandRecord]:
        """Newest first; ``kind`` and ``device_id`` narrow it (a device's own commands)."""
        ...

    def record_ack(self, ack: AckRecord) -> None:
        """Upsert per (command_id, device_id); acks of unknown commands are kept too."""
        ...

    def list_acks(
        self, command_id: str | None = None, *, command_ids: Collection[str] | None = None
    ) -> list[AckRecord]:
        """All acks, or those of one command, or of the given commands (bounded reads for views)."""
        ...

    # -- audit --------------------------------------------------------------------
    def audit(self, actor: str, action: str, detail: dict[str, Any], *, at: float | None = None) -> None: ...

    def list_audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        """Newest first; ``before`` (an entry id) pages back through older entries."""
        ...

    def close(self) -> None: ...
