"""The run the twin hosts for the deployment's ServerApp, and its per-round accounting.

It implements ``server.federation.hosting.FederatedRun``: the ServerApp drives it with the
same strategy loop as a fleet training run, but the strategy comes from the catalog by the
scenario's name, the holdout is the scenario's, and nothing is registered or released.
Before aggregation it reads each reply's twin outcome (asked, offline, dropped, finished),
keeps the finished replies in device order (so aggregation is deterministic) and prices the
round from the device and network profiles.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from server.federation.hosting import ConfigValue, MetricValue
from server.federation.strategies import CatalogStrategy, StrategyParams, build_strategy
from shared.tasks import fraud
from simulations.twin.cpu import run_cpu_seconds
from simulations.twin.data import TwinData
from simulations.twin.fleet_model import DevicePlan, RoundCost, Status, payload_bytes, round_cost
from simulations.twin.scenario import Scenario
from simulations.twin.virtual_client import DEVICE_KEY, SCENARIO_KEY, STATUS_KEY

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    round: int
    holdout: dict[str, float]
    asked: int = 0
    participants: int = 0
    unavailable: int = 0
    dropped: int = 0
    rejected: int = 0  # replies the strategy's sanitization dropped (NaN, norms, shapes)
    byzantine_participants: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    simulated_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the driver and the Ray processes during the round
    train_loss: float = float("nan")
    rejected_reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


ProgressFn = Callable[[int, int, "RoundRecord"], None]


class TwinRun:
    def __init__(
        self, scenario: Scenario, data: TwinData, model: fraud.FraudMLP, progress: ProgressFn | None = None
    ) -> None:
        self.scenario = scenario
        self.data = data
        self.model = model
        self.rounds = scenario.rounds
        self.plan = DevicePlan(scenario)
        self.progress = progress
        sizes = [int(t.numel()) for t in model.state_dict().values()]
        self.model_bytes = payload_bytes(sizes, scenario.model.precision)
        self.records: dict[int, RoundRecord] = {}
        self.final_state: dict[str, torch.Tensor] | None = None
        self.error: str | None = None
        self._costs: dict[int, RoundCost] = {}
        self._byzantine: dict[int, int] = {}
        self._strategy: CatalogStrategy | None = None
        self._mark = time.perf_counter()
        self._cpu_mark = 0.0

    def start_clock(self) -> None:
        """Round 1's wall and CPU time count from here (after Ray is up)."""
        self._mark, self._cpu_mark = time.perf_counter(), run_cpu_seconds()

    @property
    def round_timeout_s(self) -> float:
        # Real seconds Flower waits for the virtual replies (the simulated timeout is priced apart).
        return 3600.0

    def strategy(self) -> CatalogStrategy:
        s = self.scenario.strategy
        self._strategy = build_strategy(
            s.name,
            min_nodes=self.scenario.devices,
            params=StrategyParams(proximal_mu=s.proximal_mu, trim_beta=s.trim_beta, byzantine=s.byzantine, keep=s.keep),
            reply_filter=self._account,
        )
        return self._strategy

    def train_config(self) -> dict[str, ConfigValue]:
        s = self.scenario
        return {
            "feature-spec": self.data.spec.model_dump_json(),
            "local-epochs": s.local_epochs,
            "batch-size": s.batch_size,
            "lr": s.lr,
            "proximal-mu": 0.0,
            "seed": s.seed,
            SCENARIO_KEY: s.model_dump_json(),
        }

    def _account(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Price the round from the twin outcomes; hand on the finished replies in device order."""
        statuses = np.full(self.scenario.devices, Status.NOT_SAMPLED, dtype=np.int8)
        finished: list[tuple[int, Message]] = []
        for msg in replies:
            if msg.has_error():
                finished.append((-1, msg))  # the strategy counts it as a failure
                continue
            metrics = msg.content.metric_records["metrics"]
            device, status = int(metrics[DEVICE_KEY]), int(metrics[STATUS_KEY])  # type: ignore[arg-type]
            statuses[device] = status
            del metrics[DEVICE_KEY]
            del metrics[STATUS_KEY]
            if status == Status.OK:
                finished.append((device, msg))
        finished.sort(key=lambda item: item[0])
        self._costs[server_round] = round_cost(self.plan, statuses, self.data.examples, self.model_bytes)
        self._byzantine[server_round] = int(sum(1 for d, _ in finished if d >= 0 and self.plan.byzantine[d]))
        return [msg for _, msg in finished]

    def evaluate_round(self, server_round: int, state: dict[str, torch.Tensor]) -> dict[str, MetricValue]:
        model = fraud.build_model()
        model.load_state_dict(state)
        metrics = fraud.evaluate(model, self.data.spec.transform(self.data.holdout.raw), self.data.holdout.labels)
        now, cpu = time.perf_counter(), run_cpu_seconds()
        record = RoundRecord(round=server_round, holdout=metrics, wall_s=now - self._mark, cpu_s=cpu - self._cpu_mark)
        self._mark, self._cpu_mark = now, cpu
        cost = self._costs.get(server_round)
        if cost is not None:
            record.asked, record.participants = cost.asked, cost.participants
            record.unavailable, record.dropped = cost.unavailable, cost.dropped
            record.bytes_down, record.bytes_up, record.simulated_s = cost.bytes_down, cost.bytes_up, cost.simulated_s
            record.byzantine_participants = self._byzantine.get(server_round, 0)
        outcome = self._strategy.outcomes.get(server_round) if self._strategy else None
        if outcome is not None:
            record.rejected = outcome.failures
            record.rejected_reasons = outcome.reasons[:20]
            record.participants = outcome.participants
            record.train_loss = outcome.train_metrics.get("train-loss", float("nan"))
        self.records[server_round] = record
        if self.progress is not None:
            self.progress(server_round, self.rounds, record)
        return {k: v for k, v in metrics.items() if np.isfinite(v)}

    def finish(self, state: dict[str, torch.Tensor] | None) -> None:
        self.final_state = state

    def fail(self, exc: BaseException) -> None:
        self.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.error("twin run failed: %s", self.error)
