"""TrainingRun without a SuperLink: open from v1, per-round bookkeeping, the promotion gate, release of v2."""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from server.app import ensure_bootstrap_model, ensure_signing_key
from server.config import ServerSettings
from server.errors import ServerError
from server.federation.run import TrainingRun, promotion_gate
from server.federation.strategy import SanitizedFedAvg
from server.registry import InMemoryRegistry
from server.training.checkpoints import checkpoint_path, load_state
from shared import topics
from shared.bundle import ChunkAssembler, parse_manifest, verify_manifest
from shared.datasets.fraud import synthetic
from shared.datasets.io import write_parquet_atomic
from shared.datasets.split import time_split
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import DeviceStatus
from shared.signing import TrustStore

# -- promotion_gate ----------------------------------------------------------------------


def test_gate_publishes_a_better_or_equal_candidate() -> None:
    assert promotion_gate({"auprc": 0.8}, {"auprc": 0.7}, 0.0).publish
    assert promotion_gate({"auprc": 0.7}, {"auprc": 0.7}, 0.0).publish


def test_gate_refuses_a_regression_beyond_the_tolerance() -> None:
    decision = promotion_gate({"auprc": 0.6}, {"auprc": 0.7}, 0.05)
    assert not decision.publish
    assert "below parent" in decision.reason


def test_gate_accepts_a_regression_within_the_tolerance() -> None:
    assert promotion_gate({"auprc": 0.68}, {"auprc": 0.7}, 0.05).publish


def test_gate_refuses_an_undefined_candidate() -> None:
    assert not promotion_gate({}, {"auprc": 0.7}, 0.0).publish
    assert not promotion_gate({"auprc": float("nan")}, {"auprc": 0.7}, 0.0).publish
    assert "undefined" in promotion_gate({}, {"auprc": 0.7}, 0.0).reason


def test_gate_publishes_when_the_parent_has_no_auprc() -> None:
    assert promotion_gate({"auprc": 0.1}, {}, 0.0).publish
    assert promotion_gate({"auprc": 0.1}, {"auprc": float("nan")}, 0.0).publish


# -- TrainingRun ---------------------------------------------------------------------------


@dataclass
class Bootstrapped:
    settings: ServerSettings
    registry: InMemoryRegistry
    key: Ed25519PrivateKey


def make_settings(tmp_path: Path, broker_url: str = "mqtt://127.0.0.1:1", tolerance: float = 0.0) -> ServerSettings:
    split = time_split(synthetic(4000, fraud_rate=0.05, seed=7), bootstrap_frac=0.5, holdout_frac=0.3)
    data = tmp_path / "data"
    write_parquet_atomic(split.bootstrap, data / "bootstrap.parquet")
    write_parquet_atomic(split.holdout, data / "holdout.parquet")
    return ServerSettings(
        data_dir=tmp_path / "server",
        fleet=f"fl-{uuid.uuid4().hex[:8]}",  # retained releases of other tests stay out of sight
        broker_url=broker_url,
        bootstrap_data=data / "bootstrap.parquet",
        holdout_data=data / "holdout.parquet",
        bootstrap_epochs=3,
        finetune_epochs=1,
        device="cpu",
        max_auprc_regression=tolerance,
    )


def bootstrap(settings: ServerSettings) -> Bootstrapped:
    registry = InMemoryRegistry()
    key = ensure_signing_key(settings)
    assert ensure_bootstrap_model(settings, registry, None, key) == 1
    return Bootstrapped(settings, registry, key)


@pytest.fixture
def boot(tmp_path: Path) -> Bootstrapped:
    return bootstrap(make_settings(tmp_path))


def open_run(b: Bootstrapped, run_id: str = "run-1", rounds: int = 1) -> TrainingRun:
    return TrainingRun.open(b.settings, run_id=run_id, rounds=rounds, min_agents=1, registry=b.registry)


def test_open_refuses_without_a_published_model(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(ServerError, match="bootstrap"):
        TrainingRun.open(settings, run_id="r", rounds=1, min_agents=1, registry=InMemoryRegistry())


def test_open_starts_from_the_parent_checkpoint(boot: Bootstrapped) -> None:
    run = open_run(boot)
    assert run.parent.version == 1
    parent_state = load_state(boot.settings.data_dir, boot.settings.task, 1)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, parent_state[name])
    record = boot.registry.get_run("run-1")
    assert record is not None
    assert record.status == "running"
    assert len(run.holdout.x) == len(run.holdout.y) > 0
    cfg = run.train_config()
    assert cfg["local-epochs"] == boot.settings.local_epochs
    assert run.parent.feature_spec.model_dump_json() == cfg["feature-spec"]


def test_round_one_waits_for_every_online_unrevoked_device_of_the_fleet(boot: Bootstrapped) -> None:
    now = time.time()
    fleet = boot.settings.fleet
    window = boot.settings.online_window_s
    for device, kind, seen, device_fleet in (
        ("up-1", "heartbeat", now, fleet),
        ("up-2", "birth", now, fleet),
        ("revoked", "heartbeat", now, fleet),
        ("said-goodbye", "offline", now, fleet),
        ("silent", "heartbeat", now - 2 * window, fleet),
        ("elsewhere", "heartbeat", now, "another-fleet"),
    ):
        status = DeviceStatus(device_id=device, fleet=device_fleet, kind=kind, ts=seen)
        boot.registry.upsert_device_status(status, received_at=seen)
    boot.registry.set_device_revoked("revoked", True)
    assert open_run(boot).expected_nodes() == 2
    wider = TrainingRun.open(boot.settings, run_id="run-2", rounds=1, min_agents=5, registry=boot.registry)
    assert wider.expected_nodes() == 5  # never fewer than min_agents


def test_reopening_a_run_records_the_flower_run_id(boot: Bootstrapped) -> None:
    open_run(boot)
    TrainingRun.open(boot.settings, run_id="run-1", rounds=1, min_agents=1, flower_run_id=77, registry=boot.registry)
    record = boot.registry.get_run("run-1")
    assert record is not None
    assert record.flower_run_id == "77"


def test_evaluate_round_records_rounds_with_the_strategy_outcome(boot: Bootstrapped) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    run = open_run(boot)
    strategy = run.strategy()
    state = run.model.state_dict()
    metrics0 = run.evaluate_round(0, state)
    assert "auprc" in metrics0
    assert boot.registry.list_rounds("run-1") == []  # round 0 is the parent: not a round of this run

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 5, 1
    try:

        def reply(node: int, arrays: ArrayRecord, n: int) -> Message:
            sent = Message(RecordDict({"arrays": arrays}), dst_node_id=node, message_type=MessageType.TRAIN)
            metrics = MetricRecord({"num-examples": n, "train-loss": 0.3, "positives": 1})
            return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=sent)

        good = ArrayRecord(state)
        bad = ArrayRecord({k: torch.full_like(v, float("nan")) for k, v in state.items()})
        agg, _ = strategy.aggregate_train(1, [reply(2, good, 10), reply(3, bad, 10)])
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    assert agg is not None
    metrics1 = run.evaluate_round(1, agg.to_torch_state_dict())
    assert metrics1["auprc"] == pytest.approx(metrics0["auprc"])  # the one sound update was the parent itself
    rounds = boot.registry.list_rounds("run-1")
    assert [(r.round, r.participants, r.failures) for r in rounds] == [(1, 1, 1)]
    assert rounds[0].metrics["auprc"] == pytest.approx(metrics0["auprc"])
    assert rounds[0].metrics["train_train-loss"] == pytest.approx(0.3)
    assert rounds[0].duration_s >= 0


def test_a_nan_train_metric_never_reaches_the_rounds_record(boot: Bootstrapped) -> None:
    """PostgreSQL refuses NaN in JSON: one such metric failed the round's record and the run."""
    from flwr.supercore.task_identity import TaskIdentity

    run = open_run(boot)
    strategy = run.strategy()
    state = run.model.state_dict()
    run.evaluate_round(0, state)

    def reply(node: int, loss: float) -> Message:
        sent = Message(RecordDict({"arrays": ArrayRecord(state)}), dst_node_id=node, message_type=MessageType.TRAIN)
        metrics = MetricRecord({"num-examples": 10, "train-loss": loss})
        return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=sent)

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 5, 1
    try:
        # A reply's NaN metric: the reply is dropped (its weights are sound, its report is not).
        agg, _ = strategy.aggregate_train(1, [reply(2, 0.4), reply(3, float("nan"))])
        assert agg is not None
        run.evaluate_round(1, agg.to_torch_state_dict())
        # A user's own metrics averaging that yields NaN: the round is stored without it.
        strategy.train_metrics_aggr_fn = lambda contents, key: MetricRecord({"train-loss": float("nan"), "ok": 1.0})
        agg, _ = strategy.aggregate_train(2, [reply(2, 0.4), reply(3, 0.2)])
        assert agg is not None
        run.evaluate_round(2, agg.to_torch_state_dict())
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    rounds = boot.registry.list_rounds("run-1")
    assert [(r.round, r.participants, r.failures) for r in rounds] == [(1, 1, 1), (2, 2, 0)]
    assert rounds[0].metrics["train_train-loss"] == pytest.approx(0.4)
    assert "train_train-loss" not in rounds[1].metrics
    assert rounds[1].metrics["train_ok"] == 1.0
    assert all(math.isfinite(v) for r in rounds for v in r.metrics.values())


def test_open_refuses_an_unknown_strategy(boot: Bootstrapped) -> None:
    with pytest.raises(ServerError, match="unknown strategy 'bogus'"):
        TrainingRun.open(boot.settings, run_id="r", rounds=1, min_agents=1, registry=boot.registry, strategy="bogus")


def test_a_named_strategy_aggregates_with_its_rule(boot: Bootstrapped) -> None:
    """A run opened with ``median`` takes the coordinate-wise median, where FedAvg would be pulled away."""
    from flwr.supercore.task_identity import TaskIdentity

    state = load_state(boot.settings.data_dir, boot.settings.task, 1)
    results = {}
    for name in ("fedavg", "median"):
        run = TrainingRun.open(
            boot.settings, run_id=f"run-{name}", rounds=1, min_agents=1, registry=boot.registry, strategy=name
        )
        strategy = run.strategy()
        saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 5, 1
        try:

            def reply(node: int, scale: float) -> Message:
                arrays = ArrayRecord({k: v * scale for k, v in state.items()})
                sent = Message(RecordDict({"arrays": arrays}), dst_node_id=node, message_type=MessageType.TRAIN)
                metrics = MetricRecord({"num-examples": 10, "train-loss": 0.3, "positives": 1})
                return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=sent)

            # Two honest updates (the parent) and one scaled by 50: an outlier the median ignores.
            agg, _ = strategy.aggregate_train(1, [reply(2, 1.0), reply(3, 1.0), reply(4, 50.0)])
        finally:
            TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
        assert agg is not None
        results[name] = agg.to_torch_state_dict()
    for key, parent in state.items():
        if parent.abs().max() > 0:
            assert torch.allclose(results["median"][key], parent, atol=1e-6)
            assert not torch.allclose(results["fedavg"][key], parent, atol=1e-3)


@pytest.mark.parametrize("exact", [True, False])
def test_the_runs_fedavg_has_flowers_bits_and_follows_the_aggregation_exact_setting(
    boot: Bootstrapped, exact: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU kernel gives Flower's bits either way; ``aggregation_exact`` also keeps rounds off a GPU."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    from flwr.supercore.task_identity import TaskIdentity

    from server.aggregation import fedavg as kernel

    monkeypatch.setattr(kernel, "STACK_BYTES", 0)  # every float layer is a block: the compiled loop
    settings = boot.settings.model_copy(update={"aggregation_exact": exact})
    run = TrainingRun.open(settings, run_id=f"run-exact-{exact}", rounds=1, min_agents=1, registry=boot.registry)
    state = load_state(boot.settings.data_dir, boot.settings.task, 1)
    gen = torch.Generator().manual_seed(3)
    records = [
        ArrayRecord({k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}) for _ in range(5)
    ]
    weights = [13, 7, 29, 3, 11]
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 5, 1
    try:
        replies = []
        for node, (arrays, n) in enumerate(zip(records, weights, strict=True), start=2):
            sent = Message(RecordDict({"arrays": arrays}), dst_node_id=node, message_type=MessageType.TRAIN)
            metrics = MetricRecord({"num-examples": n, "train-loss": 0.3, "positives": 1})
            replies.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=sent))
        strategy = run.strategy()
        agg, _ = strategy.aggregate_train(1, replies)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    assert agg is not None
    contents = [
        RecordDict({"arrays": r, "metrics": MetricRecord({"num-examples": n})})
        for r, n in zip(records, weights, strict=True)
    ]
    flower = aggregate_arrayrecords(contents, "num-examples")
    floats = [k for k in flower if flower[k].numpy().dtype == np.float32]
    assert floats
    for key in floats:
        np.testing.assert_array_equal(agg[key].numpy(), flower[key].numpy())
    assert isinstance(strategy, SanitizedFedAvg)
    assert strategy.exact is exact  # what keeps its rounds off a GPU (use_gpu)


def test_finish_without_an_aggregate_raises(boot: Bootstrapped) -> None:
    run = open_run(boot)
    with pytest.raises(ServerError, match="no round produced an aggregate"):
        run.finish(None)


def test_a_much_worse_model_is_gated_and_not_published(boot: Bootstrapped) -> None:
    run = open_run(boot, run_id="run-gated")
    zeroed = {k: torch.zeros_like(v) for k, v in run.model.state_dict().items()}
    assert run.finish(zeroed) is None
    record = boot.registry.get_run("run-gated")
    assert record is not None
    assert record.status == "failed"
    assert record.error is not None
    assert record.error.startswith("gate:")
    assert record.published_version is None
    assert [m.version for m in boot.registry.list_model_versions(boot.settings.task)] == [1]
    assert not checkpoint_path(boot.settings.data_dir, boot.settings.task, 2).exists()
    assert any(a.action == "run.gate" and a.detail["publish"] is False for a in boot.registry.list_audit())


def test_fail_records_the_error(boot: Bootstrapped) -> None:
    run = open_run(boot, run_id="run-broken")
    run.fail(RuntimeError("grid went away"))
    record = boot.registry.get_run("run-broken")
    assert record is not None
    assert record.status == "failed"
    assert "grid went away" in (record.error or "")


class ReleaseWatcher:
    """A fleet-side subscriber: the retained manifest and the chunks of one version."""

    def __init__(self, broker_url: str, fleet: str, task: str, version: int) -> None:
        self.manifests: list[bytes] = []
        self.chunks: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self.client = MqttClient(BrokerAddress.parse(broker_url), f"watch-{uuid.uuid4().hex[:8]}", persistent=False)
        self.client.subscribe(topics.manifest(fleet, task), self._on_manifest)
        self.client.subscribe(topics.chunks_filter(fleet, task, version), self._on_chunk)
        self.client.start()

    def wait_complete(self, chunk_count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.manifests and len(self.chunks) >= chunk_count:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"got {len(self.manifests)} manifests and {len(self.chunks)}/{chunk_count} chunks")

    def _on_manifest(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            self.manifests.append(payload)

    def _on_chunk(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            self.chunks[int(topic.rsplit("/", 1)[1])] = payload


@pytest.mark.integration
def test_finish_publishes_v2_over_mqtt(tmp_path: Path, mosquitto) -> None:  # type: ignore[no-untyped-def]
    # The tolerance keeps this test about the release, not about one epoch of fine-tuning.
    boot = bootstrap(make_settings(tmp_path, broker_url=mosquitto.url, tolerance=0.5))
    run = open_run(boot, run_id="run-ok")
    state = {k: v.clone() for k, v in run.model.state_dict().items()}  # the aggregate equals the parent
    manifest = run.finish(state)

    assert manifest is not None
    assert manifest.version == 2
    assert manifest.parent_version == 1
    assert manifest.training_run_id == "run-ok"
    latest = boot.registry.latest_published(boot.settings.task)
    assert latest is not None
    assert (latest.version, latest.parent_version) == (2, 1)
    record = boot.registry.get_run("run-ok")
    assert record is not None
    assert (record.status, record.published_version, record.error) == ("succeeded", 2, None)
    saved = load_state(boot.settings.data_dir, boot.settings.task, 2)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(saved[name], tensor)

    watcher = ReleaseWatcher(mosquitto.url, boot.settings.fleet, boot.settings.task, 2)
    try:
        watcher.wait_complete(manifest.chunk_count)
        received = parse_manifest(watcher.manifests[-1])
        verify_manifest(received, TrustStore([boot.key.public_key()]))
        assert received == manifest
        assembler = ChunkAssembler(received)
        for index, data in watcher.chunks.items():
            assembler.add(index, data)
        model_bytes = assembler.assemble()  # checks size and sha256
        assert model_bytes == boot.registry.get_artifact(boot.settings.task, 2)
    finally:
        watcher.client.stop()
    assert np.isfinite(manifest.metrics["auprc"])
