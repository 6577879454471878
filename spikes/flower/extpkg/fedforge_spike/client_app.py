"""ClientApp (Message API, numpy only)."""

import json
import os
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.time()
    cfg = msg.content["config"]  # ConfigRecord sent by the ServerApp
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    node_cfg = dict(context.node_config)
    if node_cfg.get("device-id") in str(cfg.get("fail-on", "")).split(","):
        raise RuntimeError(f"deliberate failure on {node_cfg.get('device-id')}")
    # "Training": add a node-specific delta so aggregation is visible.
    delta = float(node_cfg.get("delta", 1.0))
    new = [a + delta for a in arrays]
    num_examples = int(node_cfg.get("num-examples", 10))
    content = RecordDict(
        {
            "arrays": ArrayRecord(new),  # list[np.ndarray] -> ArrayRecord
            "metrics": MetricRecord(
                {"num-examples": num_examples, "loss": 1.0 / (1 + int(cfg["server-round"]))}
            ),
            # Echo what the ClientApp saw (proves node_config reached the ClientApp).
            "echo": ConfigRecord(
                {
                    "node-config": json.dumps(node_cfg),
                    "run-config": json.dumps(dict(context.run_config)),
                    "pid": os.getpid(),
                    "train-s": time.time() - t0,
                }
            ),
        }
    )
    return Message(content=content, reply_to=msg)
