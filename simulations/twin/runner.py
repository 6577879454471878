"""One twin run end to end: data, initial model, the simulated rounds, the baseline, a summary.

The summary is plain data (JSON-ready); ``report`` turns it into the HTML report. Wall
times are kept apart from everything else in it: all other figures repeat exactly under
the scenario's seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from server.federation.hosting import hosting
from shared.tasks import fraud
from simulations.twin.data import TwinData, twin_data
from simulations.twin.engine import EngineInfo, ray_session, run_flower_simulation
from simulations.twin.errors import TwinError
from simulations.twin.fleet_model import distribution_cost, payload_bytes
from simulations.twin.hosted import RoundRecord, TwinRun
from simulations.twin.scenario import Scenario

log = logging.getLogger(__name__)

Phase = Callable[[str], None]
SUMMARY_SCHEMA_VERSION = 1


def initial_model(scenario: Scenario, data: TwinData) -> tuple[fraud.FraudMLP, dict[str, float]]:
    """The model round 1 starts from: the server's bootstrap model, as in the fleet, or random."""
    model = fraud.build_model(scenario.seed)
    if scenario.model.initial == "bootstrap":
        cfg = fraud.TrainConfig(
            epochs=scenario.model.bootstrap_epochs, batch_size=scenario.batch_size, lr=scenario.lr, seed=scenario.seed
        )
        fraud.train(model, data.spec.transform(data.bootstrap.raw), data.bootstrap.labels, cfg)
    metrics = fraud.evaluate(model, data.spec.transform(data.holdout.raw), data.holdout.labels)
    return model, metrics


def centralized_baseline(scenario: Scenario, data: TwinData, start: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """The upper bound: the same model trained on all devices' rows pooled, one curve point per
    round (``local_epochs`` passes over the pool each), from the same starting model."""
    model = fraud.build_model()
    model.load_state_dict(start)
    x = data.spec.transform(data.pooled.raw)
    hx = data.spec.transform(data.holdout.raw)
    curve = []
    for rnd in range(1, scenario.rounds + 1):
        cfg = fraud.TrainConfig(
            epochs=scenario.local_epochs, batch_size=scenario.batch_size, lr=scenario.lr, seed=scenario.seed + rnd
        )
        fraud.train(model, x, data.pooled.labels, cfg)
        curve.append(fraud.evaluate(model, hx, data.holdout.labels))
    return curve


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if np.isfinite(v) else None) for k, v in metrics.items()}


def run_scenario(
    scenario: Scenario,
    *,
    on_round: Callable[[int, int, RoundRecord], None] | None = None,
    on_phase: Phase | None = None,
    flower_defaults: bool = False,
    baseline: bool = True,
) -> dict[str, Any]:
    """Run ``scenario`` and return its summary; Ray is down and reaped when this returns.

    ``flower_defaults`` runs Flower's engine as shipped (its message lookup, 2 CPUs per
    client) for the benchmark; ``baseline=False`` skips the centralized curve.
    """
    phase = on_phase or (lambda _text: None)
    started = time.perf_counter()
    phase("building data")
    data = twin_data(scenario)
    torch.set_num_threads(1)
    model, initial_metrics = initial_model(scenario, data)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    run = TwinRun(scenario, data, model, progress=on_round)
    phase("starting Ray")
    ray_started = time.perf_counter()
    with ray_session(scenario) as info:
        setup_s = time.perf_counter() - ray_started
        phase("simulating rounds")
        run.start_clock()
        with hosting(run):
            run_flower_simulation(scenario, info, indexed=not flower_defaults, stock_backend=flower_defaults)
    if run.error is not None:
        raise TwinError(f"the simulated run failed: {run.error}")
    if not run.records or max(run.records) < scenario.rounds:
        raise TwinError(f"the simulation ended after {len(run.records) - 1} of {scenario.rounds} rounds")
    phase("training the centralized baseline")
    curve = centralized_baseline(scenario, data, start_state) if baseline else [{} for _ in range(scenario.rounds)]
    return _summary(scenario, data, run, info, initial_metrics, curve, setup_s, time.perf_counter() - started)


def _summary(
    scenario: Scenario,
    data: TwinData,
    run: TwinRun,
    info: EngineInfo,
    initial: dict[str, float],
    baseline: list[dict[str, float]],
    setup_s: float,
    total_s: float,
) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for rnd in range(1, scenario.rounds + 1):
        rec: dict[str, Any] = run.records[rnd].to_json()
        wall = rec.pop("wall_s")
        rec["_cpu_s"] = rec.pop("cpu_s")
        rec["holdout"] = _finite(run.records[rnd].holdout)
        rec["train_loss"] = rec["train_loss"] if np.isfinite(rec["train_loss"]) else None
        rec["baseline"] = _finite(baseline[rnd - 1])
        rec["_wall_s"] = wall
        rounds.append(rec)
    # A release is the fp32 model (ONNX) whatever the precision of the training exchanges.
    release_bytes = payload_bytes([int(t.numel()) for t in run.model.state_dict().values()], "fp32")
    dist = distribution_cost(run.plan, release_bytes)
    walls = [r["_wall_s"] for r in rounds]
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "scenario": scenario.model_dump(mode="json"),
        "fleet": {
            "devices": scenario.devices,
            "byzantine_devices": int(run.plan.byzantine.sum()),
            "examples": int(data.examples.sum()),
            "examples_per_device": {
                "min": int(data.examples.min()),
                "median": float(np.median(data.examples)),
                "max": int(data.examples.max()),
            },
            "holdout_rows": len(data.holdout.labels),
            "holdout_positives": int(data.holdout.labels.sum()),
            "profiles": {p.name: int((run.plan.profile_index == i).sum()) for i, p in enumerate(scenario.profiles)},
        },
        "model": {"precision": scenario.model.precision, "exchanged_bytes": run.model_bytes},
        "initial": _finite(initial),
        "rounds": rounds,
        "final": {
            "holdout": rounds[-1]["holdout"],
            "baseline": rounds[-1]["baseline"],
            "simulated_s": float(sum(r["simulated_s"] for r in rounds)),
            "bytes_down": int(sum(r["bytes_down"] for r in rounds)),
            "bytes_up": int(sum(r["bytes_up"] for r in rounds)),
        },
        "distribution": asdict(dist),
        # Measured on this machine: the only figures that differ between two runs.
        "_runtime": {
            "engine": asdict(info),
            "setup_s": setup_s,
            "round_wall_s": walls,
            "round_cpu_s": [r["_cpu_s"] for r in rounds],
            "total_s": total_s,
        },
    }
