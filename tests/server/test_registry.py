"""The Registry contract, run against every implementation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.errors import NotFoundError, RegistryError
from server.registry import InMemoryRegistry, ModelVersionRecord, Registry, RoundRecord
from shared.schemas import Counters, DeviceStatus, Rejection


def _sql(url: str) -> Registry:
    from server.registry.migrate import migrate
    from server.registry.sql import SqlRegistry

    migrate(url)
    return SqlRegistry(url)


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    if request.param == "memory":
        reg: Registry = InMemoryRegistry()
    elif request.param == "sqlite":
        reg = _sql(request.getfixturevalue("sqlite_url"))
    else:
        reg = _sql(request.getfixturevalue("clean_postgres"))
    yield reg
    reg.close()


def _status(device: str = "dev-1", **kw: object) -> DeviceStatus:
    base: dict[str, object] = {"device_id": device, "fleet": "default", "kind": "heartbeat", "ts": 1000.0}
    base.update(kw)
    return DeviceStatus.model_validate(base)


def _model(version: int, stage: str = "published", task: str = "fraud") -> ModelVersionRecord:
    return ModelVersionRecord(
        task=task,
        version=version,
        parent_version=version - 1 or None,
        training_run_id=f"run-{version}",
        created=1000.0 + version,
        metrics={"auprc": 0.5 + version / 100},
        sha256="ab" * 32,
        size=3,
        signer="0123456789abcdef",
        signature="sig",
        manifest={"task": task, "version": version, "chunk_count": 1},
        stage=stage,  # type: ignore[arg-type]
    )


def test_device_status_upsert_keeps_latest(registry: Registry) -> None:
    registry.upsert_device_status(_status(model_version=1), received_at=2000.0)
    registry.upsert_device_status(
        _status(
            model_version=2,
            pinned_version=2,
            signature_verified=True,
            counters=Counters(ingested=5, scored=4),
            last_rejection=Rejection(version=3, reason="bad signature", at=1999.0),
        ),
        received_at=2010.0,
    )
    registry.upsert_device_status(_status("dev-0", kind="offline"), received_at=2005.0)
    devices = registry.list_devices()
    assert [d.device_id for d in devices] == ["dev-0", "dev-1"]
    dev = registry.get_device("dev-1")
    assert dev is not None
    assert dev.serving_version == 2
    assert dev.pinned_version == 2  # the device's own word, kept as it reports it
    assert registry.get_device("dev-0").pinned_version is None  # type: ignore[union-attr]
    assert dev.signature_verified is True
    assert dev.counters["ingested"] == 5
    assert dev.last_rejection == {"version": 3, "reason": "bad signature", "at": 1999.0}
    assert dev.last_seen == 2010.0
    assert dev.online(now=2020.0, window_s=60.0)
    assert not devices[0].online(now=2006.0, window_s=60.0)
    assert registry.list_devices(fleet="other") == []


def test_retained_status_uses_its_own_timestamp(registry: Registry) -> None:
    registry.upsert_device_status(_status(ts=500.0), received_at=9000.0, retained=True)
    dev = registry.get_device("dev-1")
    assert dev is not None
    assert dev.last_seen == 500.0
    assert not dev.online(now=9000.0, window_s=60.0)


def test_model_versions_lineage_and_stages(registry: Registry) -> None:
    assert registry.next_version("fraud") == 1
    assert registry.latest_published("fraud") is None
    registry.add_model_version(_model(1), b"one")
    registry.add_model_version(_model(2, stage="candidate"), b"two")
    registry.add_model_version(_model(1, task="other"), b"x")
    assert registry.next_version("fraud") == 3
    assert [m.version for m in registry.list_model_versions("fraud")] == [2, 1]
    latest = registry.latest_published("fraud")
    assert latest is not None
    assert latest.version == 1
    registry.set_stage("fraud", 2, "published")
    latest = registry.latest_published("fraud")
    assert latest is not None
    assert latest.version == 2
    assert latest.parent_version == 1
    assert latest.metrics == {"auprc": pytest.approx(0.52)}
    assert latest.manifest["chunk_count"] == 1
    assert registry.get_artifact("fraud", 2) == b"two"
    assert registry.get_artifact("fraud", 9) is None
    assert registry.get_model_version("fraud", 9) is None


def test_duplicate_version_and_unknown_stage_target_are_refused(registry: Registry) -> None:
    registry.add_model_version(_model(1), b"one")
    with pytest.raises(RegistryError):
        registry.add_model_version(_model(1), b"again")
    assert registry.get_artifact("fraud", 1) == b"one"
    with pytest.raises(NotFoundError):
        registry.set_stage("fraud", 7, "rejected")


def test_runs_and_rounds(registry: Registry) -> None:
    registry.start_run("run-a", 3, started=100.0)
    registry.start_run("run-b", 2, flower_run_id=42, started=200.0, strategy="median")
    with pytest.raises(RegistryError):
        registry.start_run("run-a", 3, started=300.0)
    registry.set_flower_run_id("run-a", "7")
    registry.add_round(RoundRecord("run-a", 1, participants=3, failures=0, metrics={"loss": 0.5}, duration_s=1.5))
    registry.add_round(RoundRecord("run-a", 2, participants=2, failures=1, metrics={"loss": 0.4}, duration_s=1.0))
    # A retried write of the same round replaces it.
    registry.add_round(RoundRecord("run-a", 2, participants=3, failures=0, metrics={"loss": 0.3}, duration_s=1.1))
    with pytest.raises(NotFoundError):
        registry.add_round(RoundRecord("nope", 1, participants=1, failures=0))
    registry.finish_run("run-a", "succeeded", finished=150.0, published_version=2)
    registry.finish_run("run-b", "failed", finished=250.0, error="too few agents")
    with pytest.raises(NotFoundError):
        registry.finish_run("nope", "failed", finished=1.0)
    assert [r.run_id for r in registry.list_runs()] == ["run-b", "run-a"]
    run_a = registry.get_run("run-a")
    assert run_a is not None
    assert (run_a.status, run_a.flower_run_id, run_a.published_version) == ("succeeded", "7", 2)
    run_b = registry.get_run("run-b")
    assert run_b is not None
    assert (run_b.status, run_b.flower_run_id, run_b.error) == ("failed", "42", "too few agents")
    assert (run_a.strategy, run_b.strategy) == (None, "median")  # None: not recorded (older runs)
    rounds = registry.list_rounds("run-a")
    assert [(r.round, r.participants, r.metrics["loss"]) for r in rounds] == [(1, 3, 0.5), (2, 3, 0.3)]
    assert len(registry.list_rounds()) == 2
    assert registry.list_rounds("run-b") == []


def test_audit_log_newest_first(registry: Registry) -> None:
    registry.audit("server", "model.published", {"version": 1}, at=10.0)
    registry.audit("operator", "model.rejected", {"version": 2, "reason": "gate"}, at=20.0)
    entries = registry.list_audit()
    assert [(e.actor, e.action, e.detail["version"]) for e in entries] == [
        ("operator", "model.rejected", 2),
        ("server", "model.published", 1),
    ]
    assert len(registry.list_audit(limit=1)) == 1


def test_device_revocation_survives_status_updates(registry: Registry) -> None:
    registry.upsert_device_status(_status("d1"), received_at=1000.0)
    with pytest.raises(NotFoundError):
        registry.set_device_revoked("nobody", True)
    assert registry.set_device_revoked("d1", True).revoked is True
    registry.upsert_device_status(_status("d1", ts=2000.0), received_at=2000.0)
    device = registry.get_device("d1")
    assert device is not None
    assert device.revoked is True
    assert device.last_seen == 2000.0


def test_withdrawn_stage(registry: Registry) -> None:
    registry.add_model_version(_model(1), b"m1")
    registry.add_model_version(_model(2), b"m2")
    registry.set_stage("fraud", 2, "withdrawn")
    latest = registry.latest_published("fraud")
    assert latest is not None
    assert latest.version == 1


def test_commands_and_acks(registry: Registry) -> None:
    from server.registry.records import AckRecord, CommandRecord

    for i, at in ((1, 10.0), (2, 20.0)):
        registry.add_command(CommandRecord(f"c{i}", "default", "fraud", "rollback", i, at, at + 60, "ops", {"n": i}))
    with pytest.raises(RegistryError):
        registry.add_command(CommandRecord("c1", "default", "fraud", "rollback", 1, 1.0, 2.0, "ops", {}))
    assert [c.command_id for c in registry.list_commands("default")] == ["c2", "c1"]
    assert registry.list_commands("other") == []
    assert registry.list_commands()[0].payload == {"n": 2}
    registry.record_ack(AckRecord("c1", "d1", False, "downloading", 2, 11.0))
    registry.record_ack(AckRecord("c1", "d1", True, "serving v1", 1, 12.0))  # the latest answer wins
    registry.record_ack(AckRecord("c1", "d2", True, "serving v1", 1, 13.0))
    acks = registry.list_acks("c1")
    assert [(a.device_id, a.accepted, a.serving_version) for a in acks] == [("d1", True, 1), ("d2", True, 1)]
    assert registry.list_acks("c2") == []
    assert len(registry.list_acks()) == 2
    registry.record_ack(AckRecord("old", "d1", True, "serving v1", 1, 5.0))  # of a command no view shows
    assert [a.command_id for a in registry.list_acks(command_ids=["c1", "c2"])] == ["c1", "c1"]
    assert registry.list_acks(command_ids=[]) == []


def test_commands_narrow_to_one_kind_and_one_device(registry: Registry) -> None:
    from server.registry.records import CommandRecord

    def command(cid: str, kind: str, at: float, device: str | None) -> CommandRecord:
        payload = {} if device is None else {"device_id": device}
        return CommandRecord(cid, "default", "fraud", kind, None, at, at + 60, "ops", payload)

    registry.add_command(command("r1", "rollback", 1.0, None))
    registry.add_command(command("c1", "config", 2.0, "d1"))
    registry.add_command(command("p1", "pin", 3.0, "d1"))
    registry.add_command(command("c2", "config", 4.0, "d2"))
    registry.add_command(command("c3", "config", 5.0, "d1"))
    assert [c.command_id for c in registry.list_commands("default", kind="config", device_id="d1")] == ["c3", "c1"]
    assert [c.command_id for c in registry.list_commands("default", 1, kind="config", device_id="d1")] == ["c3"]
    assert [c.command_id for c in registry.list_commands(device_id="d1")] == ["c3", "p1", "c1"]
    assert [c.command_id for c in registry.list_commands(kind="rollback")] == ["r1"]
    assert registry.list_commands("other", kind="config", device_id="d1") == []
    assert registry.list_commands()[0].device_id == "d1"
    assert registry.list_commands(kind="rollback")[0].device_id is None


def test_audit_pages_back_with_before(registry: Registry) -> None:
    for i in range(5):
        registry.audit("ops", f"a{i}", {"i": i}, at=float(i))
    first = registry.list_audit(2)
    assert [e.action for e in first] == ["a4", "a3"]
    second = registry.list_audit(2, before=first[-1].id)
    assert [e.action for e in second] == ["a2", "a1"]
    assert [e.action for e in registry.list_audit(10, before=second[-1].id)] == ["a0"]
