"""The Flower ClientApp of an edge agent: local training on the agent's labelled records.

It runs in the agent's ClientApp worker (edge_agent/federation/worker.py: one long-running
process, the default) or in a process per message (Flower's default isolation); either way
it finds the agent's store through the SuperNode's node config (``store-path``), so it
needs no connection to the running agent. Under the digital twin the node config names a
``partition-id`` instead and the rows come from ``virtual_devices``. Every train reply
carries the same metric keys (Flower refuses to aggregate replies whose keys differ), among
them ``compute-s``, the seconds spent in local training, so round overhead can be told from
training compute. fedforge's ServerApp evaluates on its holdout instead of a second
exchange per round; the ``evaluate`` handler serves Flower's default round (train +
evaluate exchanges) and any strategy that asks the agents for local metrics.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edge_agent.federation import virtual_devices
from edge_agent.store.sqlite import SqliteAgentStore
from shared.features import FeatureSpec
from shared.tasks import fraud

log = logging.getLogger(__name__)

app = ClientApp()

Metrics = dict[str, int | float | list[int] | list[float]]


def _config(msg: Message) -> ConfigRecord:
    cfg = msg.content.config_records.get("config")
    return cfg if cfg is not None else ConfigRecord()


def _spec(cfg: ConfigRecord) -> FeatureSpec:
    return FeatureSpec.model_validate_json(str(cfg["feature-spec"]))


def _inputs(spec: FeatureSpec, raw: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    return spec.transform(raw) if len(raw) else np.zeros((0, spec.width), dtype=np.float32)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = _config(msg)
    spec = _spec(cfg)
    partition = virtual_devices.partition_id(context.node_config)
    # A virtual device (the twin) is keyed by its partition, a real one by its node id, so
    # the twin's runs repeat exactly under a seed while node ids change between runs.
    device_key = partition if partition is not None else int(context.node_id % 10_000)
    train_cfg = fraud.TrainConfig(
        epochs=int(cfg.get("local-epochs", 1)),  # type: ignore[arg-type]
        batch_size=int(cfg.get("batch-size", 256)),  # type: ignore[arg-type]
        lr=float(cfg.get("lr", 1e-3)),  # type: ignore[arg-type]
        proximal_mu=float(cfg.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
        seed=int(cfg.get("seed", 0)) + int(cfg.get("server-round", 0)) + device_key,  # type: ignore[arg-type]
    )
    model = fraud.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    if partition is not None:
        raw, labels = virtual_devices.labelled(partition, spec.width)
        x = _inputs(spec, raw)
        started = time.perf_counter()
        result = fraud.train(model, x, labels, train_cfg)
        compute_s = time.perf_counter() - started
    else:
        x, labels, result, compute_s = _train_on_store(
            Path(str(context.node_config["store-path"])), spec, model, msg, train_cfg
        )
    metrics: Metrics = {
        "num-examples": len(x),
        "train-loss": _finite(result.loss),
        "positives": int(labels.sum()) if len(labels) else 0,
        "compute-s": compute_s,
    }
    log.debug("trained on %d labelled records in %.3f s, loss %.4f", len(x), compute_s, result.loss)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def _train_on_store(
    store_path: Path, spec: FeatureSpec, model: fraud.FraudMLP, msg: Message, train_cfg: fraud.TrainConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], fraud.TrainResult, float]:
    cfg = _config(msg)
    # Read-only: the agent owns the schema and the writes; this process only reads the
    # labelled data and records what it trained on (the store's one read-only-mode write).
    store = SqliteAgentStore(store_path, readonly=True)
    try:
        raw, labels = store.labelled_dataset(spec.width)
        x = _inputs(spec, raw)
        started = time.perf_counter()
        result = fraud.train(model, x, labels, train_cfg)
        compute_s = time.perf_counter() - started
        store.record_training(
            run_id=str(msg.metadata.run_id),
            round=int(cfg.get("server-round", 0)),  # type: ignore[arg-type]
            examples=len(x),
            loss=_finite(result.loss),
        )
    finally:
        store.close()
    log.info("trained on %d labelled records in %.3f s, loss %.4f", len(x), compute_s, result.loss)
    return x, np.asarray(labels, dtype=np.float32), result, compute_s


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss of the received model on the agent's labelled records (same keys on every reply)."""
    cfg = _config(msg)
    spec = _spec(cfg) if "feature-spec" in cfg else None
    width = spec.width if spec else len(fraud.FEATURES)
    partition = virtual_devices.partition_id(context.node_config)
    if partition is not None:
        raw, labels = virtual_devices.labelled(partition, width)
    else:
        store = SqliteAgentStore(Path(str(context.node_config["store-path"])), readonly=True)
        try:
            raw, stored_labels = store.labelled_dataset(width)
        finally:
            store.close()
        labels = stored_labels.astype(np.float32)
    model = fraud.build_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    loss = 0.0
    if spec is not None and len(raw):
        loss = _finite(fraud.evaluate(model, _inputs(spec, raw), labels)["loss"])
    metrics: Metrics = {"num-examples": len(labels) if spec is not None else 0, "eval-loss": loss}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
