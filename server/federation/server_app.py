"""The Flower ServerApp: one training run of the factory.

Started by the SuperLink for each ``fedforge train``. It reads the server's settings file
named in the run config, so it uses the same registry, broker and signing key as the
``fedforge server`` process that supervises the SuperLink. Steps: FedAvg over the agents
(sanitized), fine-tuning on the server's own data, evaluation on the holdout, a promotion
gate, then export, sign, register and publish.

Rounds run through ``server.federation.rounds`` (one exchange per round, replies pulled
every 0.1 s). ``round_exchange = "flower"`` in the server settings runs Flower's own
``Strategy.start`` instead (a train and an evaluate exchange per round, 3 s pull polls):
the reference the round benchmark measures against.

Before round 1 it waits (``join_wait_s``) for the SuperNodes of the fleet's online devices,
which on-demand agents start only when the run's federation call reaches them; when the
run is over it ends that call (server.federation.calls), so they stop them again. Fewer
than ``min_agents`` after that wait, or before a later round (server.federation.sampling),
and the run fails with ``TooFewAgentsError`` (how many joined of how many needed) instead
of waiting forever in Flower's node sampling.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from server.config import load_server_settings
from server.federation.calls import announce
from server.federation.hosting import FederatedRun, hosted_run
from server.federation.rounds import run_rounds, wait_for_nodes
from server.federation.run import TrainingRun
from server.federation.sampling import TooFewAgentsError

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    hosted = hosted_run()  # the digital twin hosts its run in this process
    run: FederatedRun
    training: TrainingRun | None = None
    flower_exchange = False
    if hosted is not None:
        run = hosted
    else:
        cfg = context.run_config
        settings = load_server_settings(Path(str(cfg["server-config"])))
        run_id, rounds = str(cfg.get("training-run-id") or f"run-{int(time.time())}"), int(cfg.get("num-rounds", 1))
        try:
            training = run = TrainingRun.open(
                settings,
                run_id=run_id,
                rounds=rounds,
                min_agents=int(cfg.get("min-agents", settings.min_agents)),
                flower_run_id=int(context.run_id),
                strategy=str(cfg.get("strategy", settings.strategy)),
            )
        except BaseException:
            announce(settings, run_id, rounds, "ended")
            raise
        flower_exchange = settings.round_exchange == "flower"
    try:
        strategy = (
            training.strategy(fraction_evaluate=1.0 if flower_exchange else 0.0)
            if training is not None
            else run.strategy()
        )
        if training is not None:
            # On-demand agents start their SuperNode when the run's call reaches them; below
            # min_agents after join_wait_s the run fails here (Flower's sampling would wait forever).
            wait_s = training.settings.join_wait_s
            joined = wait_for_nodes(grid, training.expected_nodes(), wait_s)
            if joined < training.min_agents:
                raise TooFewAgentsError(joined, training.min_agents, wait_s)
        initial = ArrayRecord(run.model.state_dict())
        train_config = ConfigRecord(run.train_config())

        def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            return MetricRecord(run.evaluate_round(rnd, arrays.to_torch_state_dict()))

        if flower_exchange:
            result = strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=run.rounds,
                train_config=train_config,
                evaluate_config=train_config,
                evaluate_fn=evaluate_fn,
                timeout=run.round_timeout_s,
            )
            arrays = result.arrays
        else:
            arrays = run_rounds(
                strategy,
                grid,
                initial_arrays=initial,
                num_rounds=run.rounds,
                train_config=train_config,
                evaluate_fn=evaluate_fn,
                timeout=run.round_timeout_s,
            ).arrays
        run.finish(arrays.to_torch_state_dict() if len(arrays) else None)
    except BaseException as exc:
        run.fail(exc)
        raise
    finally:
        if training is not None:
            announce(training.settings, training.run_id, training.rounds, "ended")
