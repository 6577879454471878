"""The Flower ClientApp of an edge agent: local training on the agent's labelled records.

The SuperNode starts it (one process per message in Flower's default isolation); it finds
the agent's store through the SuperNode's node config (``store-path``), so it needs no
connection to the running agent. Every reply carries the same metric keys (Flower refuses to
aggregate replies whose keys differ); the server evaluates on its holdout instead of a
second evaluate exchange per round.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

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
    store_path = Path(str(context.node_config["store-path"]))
    cfg = _config(msg)
    spec = FeatureSpec.model_validate_json(str(cfg["feature-spec"]))
    train_cfg = fraud.TrainConfig(
        epochs=int(cfg.get("local-epochs", 1)),  # type: ignore[arg-type]
        batch_size=int(cfg.get("batch-size", 256)),  # type: ignore[arg-type]
        lr=float(cfg.get("lr", 1e-3)),  # type: ignore[arg-type]
        proximal_mu=float(cfg.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
        seed=int(cfg.get("server-round", 0)) + int(context.node_id % 10_000),  # type: ignore[arg-type]
    )
    # Read-only: the agent owns the schema and the writes; this process only reads the
    # labelled data and records what it trained on (the store's one read-only-mode write).
    store = SqliteAgentStore(store_path, readonly=True)
    try:
        raw, labels = store.labelled_dataset(spec.width)
        model = fraud.build_model()
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
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
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": len(x),
        "train-loss": result.loss if math.isfinite(result.loss) else 0.0,
        "positives": int(labels.sum()) if len(labels) else 0,
    }
    log.info("trained on %d labelled records, loss %.4f", len(x), result.loss)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
