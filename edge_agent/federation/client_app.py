"""The Flower ClientApp of an edge agent: local training on the agent's labelled records.

The SuperNode starts it (one process per message in Flower's default isolation); it finds
the agent's store through the SuperNode's node config (``store-path``), so it needs no
connection to the running agent. Under the digital twin the node config names a
``partition-id`` instead and the rows come from ``virtual_devices``. Every reply carries
the same metric keys (Flower refuses to aggregate replies whose keys differ); the server
evaluates on its holdout instead of a second evaluate exchange per round.
"""

from __future__ import annotations

import logging
import math
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


def _config(msg: Message) -> ConfigRecord:
    cfg = msg.content.config_records.get("config")
    return cfg if cfg is not None else ConfigRecord()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = _config(msg)
    spec = FeatureSpec.model_validate_json(str(cfg["feature-spec"]))
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
        x = spec.transform(raw) if len(raw) else np.zeros((0, spec.width), dtype=np.float32)
        result = fraud.train(model, x, labels, train_cfg)
    else:
        x, labels, result = _train_on_store(Path(str(context.node_config["store-path"])), spec, model, msg, train_cfg)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": len(x),
        "train-loss": result.loss if math.isfinite(result.loss) else 0.0,
        "positives": int(labels.sum()) if len(labels) else 0,
    }
    log.debug("trained on %d labelled records, loss %.4f", len(x), result.loss)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def _train_on_store(
    store_path: Path, spec: FeatureSpec, model: fraud.FraudMLP, msg: Message, train_cfg: fraud.TrainConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], fraud.TrainResult]:
    cfg = _config(msg)
    # Read-only: the agent owns the schema and the writes; this process only reads the
    # labelled data and records what it trained on (the store's one read-only-mode write).
    store = SqliteAgentStore(store_path, readonly=True)
    try:
        raw, labels = store.labelled_dataset(spec.width)
        x = spec.transform(raw) if len(raw) else np.zeros((0, spec.width), dtype=np.float32)
        result = fraud.train(model, x, labels, train_cfg)
        store.record_training(
            run_id=str(msg.metadata.run_id),
            round=int(cfg.get("server-round", 0)),  # type: ignore[arg-type]
            examples=len(x),
            loss=result.loss if math.isfinite(result.loss) else 0.0,
        )
    finally:
        store.close()
    log.info("trained on %d labelled records, loss %.4f", len(x), result.loss)
    return x, np.asarray(labels, dtype=np.float32), result
