"""The ClientApp's train handler, called through the ClientApp as the SuperNode's runtime calls it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edge_agent.federation.client_app import app
from edge_agent.pipeline import CleanRecord
from edge_agent.store import SqliteAgentStore
from shared.datasets.fraud import synthetic
from shared.features import FeatureSpec
from shared.tasks import fraud

NODE_ID = 9_876_543
RUN_ID = 31


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """The SuperLink's identity, so the test can build the instruction a ServerApp would send."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 1
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def frame():  # type: ignore[no-untyped-def]
    return synthetic(300, fraud_rate=0.1, seed=3)


@pytest.fixture(scope="module")
def spec(frame) -> FeatureSpec:  # type: ignore[no-untyped-def]
    return fraud.base_feature_spec().fit(frame.loc[:, list(fraud.FEATURES)].to_numpy(dtype=np.float64))


def make_store(path: Path, frame, labelled: int) -> None:  # type: ignore[no-untyped-def]
    """An agent store with all rows of ``frame`` and labels on the first ``labelled`` of them."""
    rows = frame.loc[:, list(fraud.FEATURES)].to_numpy(dtype=np.float64)
    store = SqliteAgentStore(path)
    try:
        store.add_records([CleanRecord(f"r{i}", float(i), tuple(float(v) for v in row)) for i, row in enumerate(rows)])
        store.add_labels([(f"r{i}", int(frame["Class"].iloc[i])) for i in range(labelled)])
    finally:
        store.close()


def train_message(model: fraud.FraudMLP, spec: FeatureSpec, server_round: int = 1) -> Message:
    config = ConfigRecord(
        {
            "feature-spec": spec.model_dump_json(),
            "local-epochs": 2,
            "batch-size": 32,
            "lr": 1e-2,
            "proximal-mu": 0.01,
            "server-round": server_round,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    return Message(content, dst_node_id=NODE_ID, message_type=MessageType.TRAIN, group_id=str(server_round))


def context(store_path: Path) -> Context:
    return Context(
        run_id=RUN_ID,
        node_id=NODE_ID,
        node_config={"store-path": str(store_path), "device-id": "dev-1"},
        state=RecordDict(),
        run_config={},
    )


def reply_arrays(reply: Message) -> dict[str, torch.Tensor]:
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    out: dict[str, torch.Tensor] = reply.content.array_records["arrays"].to_torch_state_dict()
    return out


def test_train_on_labelled_records(tmp_path: Path, frame, spec: FeatureSpec) -> None:  # type: ignore[no-untyped-def]
    store_path = tmp_path / "agent.db"
    make_store(store_path, frame, labelled=200)
    model = fraud.build_model(0)
    sent = {k: v.clone() for k, v in model.state_dict().items()}

    reply = app(train_message(model, spec), context(store_path))

    got = reply_arrays(reply)
    assert set(got) == set(sent)
    for name, tensor in sent.items():
        assert got[name].shape == tensor.shape
    assert any(not torch.equal(got[name], sent[name]) for name in sent)
    assert all(torch.isfinite(t).all() for t in got.values())
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == 200
    assert metrics["positives"] == int(frame["Class"].iloc[:200].sum())
    assert np.isfinite(float(metrics["train-loss"]))  # type: ignore[arg-type]
    assert reply.metadata.src_node_id == NODE_ID
    assert reply.metadata.dst_node_id == 1
    assert reply.metadata.run_id == RUN_ID
    store = SqliteAgentStore(store_path, readonly=True)
    try:
        assert store.trained_examples() == 200
    finally:
        store.close()


def test_no_labelled_records_returns_the_model_unchanged(tmp_path: Path, frame, spec: FeatureSpec) -> None:  # type: ignore[no-untyped-def]
    store_path = tmp_path / "agent.db"
    make_store(store_path, frame, labelled=0)
    model = fraud.build_model(1)
    sent = {k: v.clone() for k, v in model.state_dict().items()}

    reply = app(train_message(model, spec), context(store_path))

    got = reply_arrays(reply)
    for name, tensor in sent.items():
        assert torch.equal(got[name], tensor)
    metrics = reply.content.metric_records["metrics"]
    assert metrics["num-examples"] == 0
    assert metrics["positives"] == 0
    assert metrics["train-loss"] == 0.0
    # Same metric keys as a reply with data: Flower aggregates only replies whose keys agree.
    assert set(metrics) == {"num-examples", "train-loss", "positives", "compute-s"}


def test_training_is_recorded_per_round(tmp_path: Path, frame, spec: FeatureSpec) -> None:  # type: ignore[no-untyped-def]
    store_path = tmp_path / "agent.db"
    make_store(store_path, frame, labelled=50)
    model = fraud.build_model(2)
    app(train_message(model, spec, server_round=1), context(store_path))
    app(train_message(model, spec, server_round=2), context(store_path))
    store = SqliteAgentStore(store_path, readonly=True)
    try:
        assert store.trained_examples() == 100
    finally:
        store.close()


def test_evaluate_reports_the_local_loss_with_the_same_keys(tmp_path: Path, frame, spec: FeatureSpec) -> None:  # type: ignore[no-untyped-def]
    """Flower's default round asks every node to evaluate the aggregate: same keys with or without data."""
    with_data, without = tmp_path / "a.db", tmp_path / "b.db"
    make_store(with_data, frame, labelled=120)
    make_store(without, frame, labelled=0)
    msg = train_message(fraud.build_model(0), spec)
    evaluate_msg = Message(msg.content, dst_node_id=NODE_ID, message_type=MessageType.EVALUATE, group_id="1")

    got = app(evaluate_msg, context(with_data)).content.metric_records["metrics"]
    empty = app(evaluate_msg, context(without)).content.metric_records["metrics"]

    assert got["num-examples"] == 120
    assert float(got["eval-loss"]) > 0  # type: ignore[arg-type]
    assert empty["num-examples"] == 0
    assert empty["eval-loss"] == 0.0
    assert set(got) == set(empty) == {"num-examples", "eval-loss"}


def test_a_missing_store_fails_the_message_and_creates_nothing(tmp_path: Path, spec: FeatureSpec) -> None:
    """Flower turns the exception into an error reply, which the server counts as a failure."""
    from edge_agent.store import StoreError

    store_path = tmp_path / "never-started" / "agent.db"
    with pytest.raises(StoreError, match="does not exist"):
        app(train_message(fraud.build_model(0), spec), context(store_path))
    assert not store_path.exists()


class _Rows:
    """A partition source as the twin installs one: rows per virtual device."""

    def __init__(self, frame) -> None:  # type: ignore[no-untyped-def]
        self.raw = frame.loc[:, list(fraud.FEATURES)].to_numpy(dtype=np.float64)
        self.labels = frame["Class"].to_numpy(dtype=np.float32)

    def labelled(self, partition_id: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(partition_id * 100, (partition_id + 1) * 100)
        return self.raw[rows], self.labels[rows]


def virtual_context(partition: int) -> Context:
    return Context(
        run_id=RUN_ID,
        node_id=NODE_ID + partition,
        node_config={"partition-id": partition, "num-partitions": 3},
        state=RecordDict(),
        run_config={},
    )


def test_a_virtual_device_trains_on_its_partition_reproducibly(frame, spec: FeatureSpec) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.federation import virtual_devices

    virtual_devices.install(_Rows(frame))
    try:
        model = fraud.build_model(0)
        first = app(train_message(model, spec), virtual_context(2))
        again = app(train_message(model, spec), Context(**{**virtual_context(2).__dict__, "node_id": 1}))
    finally:
        virtual_devices.install(None)
    metrics = first.content.metric_records["metrics"]
    assert metrics["num-examples"] == 100
    assert metrics["positives"] == int(frame["Class"].iloc[200:300].sum())
    # Seeded by the partition, not the node id: the twin's runs repeat under a seed.
    a, b = reply_arrays(first), reply_arrays(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_virtual_device_without_a_source_fails_clearly(spec: FeatureSpec) -> None:
    from shared.errors import DatasetError

    with pytest.raises(DatasetError, match="no partition source"):
        app(train_message(fraud.build_model(0), spec), virtual_context(0))
