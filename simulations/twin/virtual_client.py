"""The twin's ClientApp: the edge ClientApp, wrapped with what the simulated world does to it.

Each Ray actor runs this app for many virtual devices. The wrapper decides, from the
scenario's seeded plan, whether the device is asked, online and finishes the round; feeds
the edge ClientApp (``edge_agent.federation.client_app:app``, unchanged) the device's rows
through the ``virtual_devices`` hook; and then applies what the edge code must not know
about: precision loss on the exchanged model and update, and a Byzantine device's attack.
Every reply carries ``twin-device`` and ``twin-status`` so the server's accounting can tell
the outcomes apart; replies of devices that did not finish carry no arrays.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edge_agent.federation import virtual_devices
from edge_agent.federation.client_app import app as edge_app
from simulations.twin import tamper
from simulations.twin.data import twin_data
from simulations.twin.fleet_model import DevicePlan, Status
from simulations.twin.scenario import Scenario

SCENARIO_KEY = "twin-scenario"
DEVICE_KEY = "twin-device"
STATUS_KEY = "twin-status"
EDGE_METRICS = ("num-examples", "train-loss", "positives")

app = ClientApp()
_init_lock = threading.Lock()
_initialized = False


def _init_process() -> None:
    """Once per actor process: one torch thread (actors are the parallelism, not BLAS)."""
    global _initialized
    with _init_lock:
        if not _initialized:
            torch.set_num_threads(1)
            _initialized = True


@lru_cache(maxsize=2)
def _scenario(text: str) -> Scenario:
    return Scenario.model_validate_json(text)


@lru_cache(maxsize=2)
def _plan(scenario: Scenario) -> DevicePlan:
    return DevicePlan(scenario)


@lru_cache(maxsize=4)
def _statuses(scenario: Scenario, server_round: int) -> np.ndarray:
    return _plan(scenario).statuses(server_round)


def _reply(msg: Message, arrays: ArrayRecord, metrics: dict[str, int | float], device: int, status: Status) -> Message:
    record = MetricRecord({**metrics, DEVICE_KEY: device, STATUS_KEY: int(status)})
    return Message(content=RecordDict({"arrays": arrays, "metrics": record}), reply_to=msg)


def _empty(msg: Message, device: int, status: Status) -> Message:
    return _reply(msg, ArrayRecord(), {k: 0 for k in EDGE_METRICS}, device, status)


def _record(keys: list[str], arrays: tamper.Arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(a)) for k, a in zip(keys, arrays, strict=True)})


@app.train()
def train(msg: Message, context: Context) -> Message:
    _init_process()
    cfg = msg.content.config_records["config"]
    scenario = _scenario(str(cfg[SCENARIO_KEY]))
    virtual_devices.install(twin_data(scenario))
    device = virtual_devices.partition_id(context.node_config)
    if device is None:
        raise ValueError("the twin's ClientApp runs only on virtual devices (no partition-id in the node config)")
    server_round = int(cfg.get("server-round", 0))  # type: ignore[arg-type]
    status = Status(int(_statuses(scenario, server_round)[device]))
    if status in (Status.NOT_SAMPLED, Status.UNAVAILABLE):
        return _empty(msg, device, status)

    precision = scenario.model.precision
    byzantine = bool(_plan(scenario).byzantine[device])
    sent = msg.content.array_records["arrays"]
    keys = list(sent.keys())
    received: tamper.Arrays | None = None
    if precision != "fp32":
        received = tamper.quantize_model(sent.to_numpy_ndarrays(), precision)
        msg.content.array_records["arrays"] = _record(keys, received)

    reply = edge_app(message=msg, context=context)
    if reply.has_error():
        return reply
    if status == Status.DROPPED:  # it trained, then vanished before uploading
        return _empty(msg, device, status)

    out = reply.content.array_records["arrays"]
    # Decoding and re-encoding arrays is most of a message's cost: only when something changes them.
    if byzantine or precision != "fp32":
        if received is None:
            received = [np.asarray(a, dtype=np.float32) for a in sent.to_numpy_ndarrays()]
        new = [np.asarray(a, dtype=np.float32) for a in out.to_numpy_ndarrays()]
        if byzantine:
            b = scenario.byzantine
            seed = scenario.seed * 100_003 + server_round * 7919 + device
            new = tamper.attack(b.attack, new, received, scale=b.scale, sigma=b.sigma, seed=seed)
        if precision != "fp32":
            new = tamper.quantize_update(new, received, precision)
        out = _record(keys, new)
    edge_metrics = reply.content.metric_records["metrics"]
    metrics = {k: edge_metrics[k] for k in EDGE_METRICS}
    return _reply(msg, out, metrics, device, status)  # type: ignore[arg-type]
