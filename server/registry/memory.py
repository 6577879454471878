"""``InMemoryRegistry``: the registry for tests, the twin and single-process demos.

Thread-safe (one lock), because the fleet monitor writes from its worker thread while the
API reads from the event loop.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Collection
from typing import Any

from server.errors import NotFoundError, RegistryError
from server.registry.records import (
    STAGES,
    AckRecord,
    AuditEntry,
    CommandRecord,
    DeviceRecord,
    ModelVersionRecord,
    RoundRecord,
    RunRecord,
    RunStatus,
    Stage,
    device_record_from_status,
)
from shared.schemas import DeviceStatus


class InMemoryRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceRecord] = {}
        self._models: dict[tuple[str, int], ModelVersionRecord] = {}
        self._artifacts: dict[tuple[str, int], bytes] = {}
        self._runs: dict[str, RunRecord] = {}
        self._rounds: dict[tuple[str, int], RoundRecord] = {}
        self._audit: list[AuditEntry] = []
        self._commands: list[CommandRecord] = []
        self._acks: dict[tuple[str, str], AckRecord] = {}

    # -- devices ------------------------------------------------------------------
    def upsert_device_status(self, status: DeviceStatus, *, received_at: float, retained: bool = False) -> None:
        with self._lock:
            old = self._devices.get(status.device_id)
            key = old.public_key if old else None
            record = device_record_from_status(status, received_at, retained, key)
            self._devices[status.device_id] = dataclasses.replace(record, revoked=bool(old and old.revoked))

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self._lock:
            return self._devices.get(device_id)

    def list_devices(self, fleet: str | None = None) -> list[DeviceRecord]:
        with self._lock:
            devices = sorted(self._devices.values(), key=lambda d: d.device_id)
        return [d for d in devices if fleet is None or d.fleet == fleet]

    def set_device_revoked(self, device_id: str, revoked: bool) -> DeviceRecord:
        with self._lock:
            device = self._devices.get(device_id)
            if device is None:
                raise NotFoundError(f"no device {device_id}")
            device = dataclasses.replace(device, revoked=revoked)
            self._devices[device_id] = device
            return device

    # -- model versions -----------------------------------------------------------
    def next_version(self, task: str) -> int:
        with self._lock:
            return max((v for t, v in self._models if t == task), default=0) + 1

    def add_model_version(self, record: ModelVersionRecord, artifact: bytes) -> None:
        key = (record.task, record.version)
        with self._lock:
            if key in self._models:
                raise RegistryError(f"model {record.task} v{record.version} already exists")
            self._models[key] = record
            self._artifacts[key] = bytes(artifact)

    def get_model_version(self, task: str, version: int) -> ModelVersionRecord | None:
        with self._lock:
            return self._models.get((task, version))

    def get_artifact(self, task: str, version: int) -> bytes | None:
        with self._lock:
            return self._artifacts.get((task, version))

    def latest_published(self, task: str) -> ModelVersionRecord | None:
        published = [m for m in self.list_model_versions(task) if m.stage == "published"]
        return published[0] if published else None

    def list_model_versions(self, task: str) -> list[ModelVersionRecord]:
        with self._lock:
            return sorted((m for (t, _), m in self._models.items() if t == task), key=lambda m: -m.version)

    def set_stage(self, task: str, version: int, stage: Stage) -> None:
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}")
        with self._lock:
            record = self._models.get((task, version))
            if record is None:
                raise NotFoundError(f"no model {task} v{version}")
            self._models[(task, version)] = dataclasses.replace(record, stage=stage)

    # -- training runs ------------------------------------------------------------
    def start_run(
        self,
        run_id: str,
        rounds: int,
        *,
        flower_run_id: str | int | None = None,
        started: float,
        strategy: str | None = None,
    ) -> RunRecord:
        fid = None if flower_run_id is None else str(flower_run_id)
        record = RunRecord(
            run_id=run_id, flower_run_id=fid, status="running", rounds=rounds, started=started, strategy=strategy
        )
        with self._lock:
            if run_id in self._runs:
                raise RegistryError(f"run {run_id} already exists")
            self._runs[run_id] = record
        return record

    def _update_run(self, run_id: str, **changes: Any) -> None:
        with self._lock:
            record = self._runs.get(run_id)
            if record is None:
                raise NotFoundError(f"no run {run_id}")
            self._runs[run_id] = dataclasses.replace(record, **changes)

    def set_flower_run_id(self, run_id: str, flower_run_id: str | int) -> None:
        self._update_run(run_id, flower_run_id=str(flower_run_id))

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        finished: float,
        error: str | None = None,
        published_version: int | None = None,
    ) -> None:
        self._update_run(run_id, status=status, finished=finished, error=error, published_version=published_version)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def list_runs(self) -> list[RunRecord]:
        with self._lock:
            return sorted(self._runs.values(), key=lambda r: (-r.started, r.run_id))

    def add_round(self, record: RoundRecord) -> None:
        with self._lock:
            if record.run_id not in self._runs:
                raise NotFoundError(f"no run {record.run_id}")
            self._rounds[(record.run_id, record.round)] = record

    def list_rounds(self, run_id: str | None = None) -> list[RoundRecord]:
        with self._lock:
            rounds = [r for r in self._rounds.values() if run_id is None or r.run_id == run_id]
        return sorted(rounds, key=lambda r: (r.run_id, r.round))

    # -- audit --------------------------------------------------------------------
    def audit(self, actor: str, action: str, detail: dict[str, Any], *, at: float | None = None) -> None:
        with self._lock:
            entry = AuditEntry(len(self._audit) + 1, time.time() if at is None else at, actor, action, dict(detail))
            self._audit.append(entry)

    def list_audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        with self._lock:
            entries = [e for e in reversed(self._audit) if before is None or e.id < before]
        return entries[:limit]

    # -- fleet commands and acknowledgements ---------------------------------------
    def add_command(self, record: CommandRecord) -> None:
        with self._lock:
            if any(c.command_id == record.command_id for c in self._commands):
                raise RegistryError(f"command {record.command_id} already exists")
            self._commands.append(record)

    def list_commands(
        self, fleet: str | None = None, limit: int = 100, *, kind: str | None = None, device_id: str | None = None
    ) -> list[CommandRecord]:
        with self._lock:
            commands = [
                c
                for c in self._commands
                if (fleet is None or c.fleet == fleet)
                and (kind is None or c.kind == kind)
                and (device_id is None or c.device_id == device_id)
            ]
        return sorted(commands, key=lambda c: -c.issued_at)[:limit]

    def record_ack(self, ack: AckRecord) -> None:
        with self._lock:
            self._acks[(ack.command_id, ack.device_id)] = ack

    def list_acks(
        self, command_id: str | None = None, *, command_ids: Collection[str] | None = None
    ) -> list[AckRecord]:
        wanted = None if command_ids is None else set(command_ids)
        with self._lock:
            acks = [
                a
                for a in self._acks.values()
                if (command_id is None or a.command_id == command_id) and (wanted is None or a.command_id in wanted)
            ]
        return sorted(acks, key=lambda a: (a.command_id, a.device_id))

    def close(self) -> None:
        """Nothing to release."""
