"""One training run, apart from Flower: state, per-round bookkeeping, and the release step.

The ServerApp is a thin shell around this class, so everything after aggregation
(fine-tuning, the promotion gate, release) runs in unit tests without a SuperLink.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from server.config import ServerSettings
from server.errors import ServerError
from server.federation.catalog import DEFAULT_STRATEGY, STRATEGY_NAMES, is_strategy
from server.federation.strategies import CatalogStrategy, build_strategy
from server.federation.strategy import SanitizedFedAvg
from server.registry.records import Registry, RoundRecord
from server.registry.sql import SqlRegistry
from server.release.release import release_model
from server.training.bootstrap import resolve_device
from server.training.checkpoints import load_state, save_state
from server.training.data import labels, load_frame, model_inputs
from shared.features import FeatureSpec
from shared.mqtt import BrokerAddress, MqttClient
from shared.schemas import ModelManifest
from shared.signing import load_private_key
from shared.tasks import fraud

log = logging.getLogger(__name__)


@dataclass
class LabelledSet:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]

    @classmethod
    def from_parquet(cls, path: Path | None, spec: FeatureSpec, what: str) -> LabelledSet:
        if path is None:
            raise ServerError(f"no {what} data: set {what}_data in the server config")
        frame = load_frame(path)
        return cls(model_inputs(spec, frame), labels(frame))


@dataclass
class GateDecision:
    publish: bool
    reason: str


def promotion_gate(candidate: dict[str, float], parent: dict[str, float], max_regression: float) -> GateDecision:
    """Publish only a model that is not worse than its parent on the holdout AUPRC."""
    new, old = candidate.get("auprc", float("nan")), parent.get("auprc", float("nan"))
    if not np.isfinite(new):
        return GateDecision(False, "candidate AUPRC is undefined on the holdout")
    if np.isfinite(old) and new < old - max_regression:
        return GateDecision(False, f"holdout AUPRC {new:.4f} below parent's {old:.4f} (tolerance {max_regression})")
    return GateDecision(True, f"holdout AUPRC {new:.4f} (parent {old:.4f})")


@dataclass
class TrainingRun:
    settings: ServerSettings
    registry: Registry
    run_id: str
    rounds: int
    min_agents: int
    parent: ModelManifest
    model: fraud.FraudMLP
    holdout: LabelledSet
    finetune: LabelledSet | None
    round_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    strategy_name: str = DEFAULT_STRATEGY
    _strategy: SanitizedFedAvg | CatalogStrategy | None = None
    _round_started: float = field(default_factory=time.monotonic)

    @classmethod
    def open(
        cls,
        settings: ServerSettings,
        *,
        run_id: str,
        rounds: int,
        min_agents: int,
        flower_run_id: int | None = None,
        registry: Registry | None = None,
        strategy: str = DEFAULT_STRATEGY,
    ) -> TrainingRun:
        if not is_strategy(strategy):
            raise ServerError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGY_NAMES)}")
        registry = registry or SqlRegistry(settings.database_url)
        record = registry.latest_published(settings.task)
        if record is None:
            raise ServerError(f"no published {settings.task} model to train from: run `fedforge bootstrap` first")
        parent = ModelManifest.model_validate(record.manifest)
        model = fraud.build_model(settings.seed)
        model.load_state_dict(load_state(settings.data_dir, settings.task, parent.version))
        spec = parent.feature_spec
        holdout = LabelledSet.from_parquet(settings.holdout_data, spec, "holdout")
        finetune = (
            LabelledSet.from_parquet(settings.bootstrap_data, spec, "bootstrap") if settings.finetune_epochs else None
        )
        if registry.get_run(run_id) is None:
            registry.start_run(run_id, rounds, flower_run_id=flower_run_id, started=time.time(), strategy=strategy)
        elif flower_run_id is not None:
            registry.set_flower_run_id(run_id, flower_run_id)
        return cls(
            settings, registry, run_id, rounds, min_agents, parent, model, holdout, finetune, strategy_name=strategy
        )

    # -- federated part ------------------------------------------------------------

    def expected_nodes(self) -> int:
        """SuperNodes round 1 should wait for: every online, non-revoked device, and min_agents."""
        now = time.time()
        online = [
            d
            for d in self.registry.list_devices(self.settings.fleet)
            if not d.revoked and d.online(now, self.settings.online_window_s)
        ]
        return max(self.min_agents, len(online))

    @property
    def round_timeout_s(self) -> float:
        return self.settings.round_timeout_s

    def strategy(self, fraction_evaluate: float = 0.0) -> SanitizedFedAvg | CatalogStrategy:
        """FedAvg runs on the one-pass kernels (CPU or GPU); the other rules come from the catalog.

        ``fraction_evaluate`` matters only to Flower's own round loop (``round_exchange =
        "flower"``); the catalog's rules never ask the agents to evaluate.
        """
        if self.strategy_name == DEFAULT_STRATEGY:
            self._strategy = SanitizedFedAvg(
                min_nodes=self.min_agents,
                device=self.settings.device,
                exact=self.settings.aggregation_exact,
                fraction_evaluate=fraction_evaluate,
                node_wait_s=self.settings.join_wait_s,
            )
        else:
            self._strategy = build_strategy(
                self.strategy_name, min_nodes=self.min_agents, node_wait_s=self.settings.join_wait_s
            )
        log.info("run %s aggregates with %s", self.run_id, self.strategy_name)
        return self._strategy

    def train_config(
        self,
    ) -> dict[str, int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes] | list[bool]]:
        return {
            "feature-spec": self.parent.feature_spec.model_dump_json(),
            "local-epochs": self.settings.local_epochs,
            "batch-size": self.settings.local_batch_size,
            "lr": self.settings.local_lr,
            "proximal-mu": 0.0,
        }

    def evaluate_round(
        self, server_round: int, state: dict[str, torch.Tensor]
    ) -> dict[str, int | float | list[int] | list[float]]:
        """Holdout metrics of the global model after each round; round 0 is the parent."""
        model = fraud.build_model()
        model.load_state_dict(state)
        metrics = fraud.evaluate(model, self.holdout.x, self.holdout.y)
        self.round_metrics[server_round] = metrics
        if server_round > 0:
            outcome = self._strategy.outcomes.get(server_round) if self._strategy else None
            self.registry.add_round(
                RoundRecord(
                    run_id=self.run_id,
                    round=server_round,
                    participants=outcome.participants if outcome else 0,
                    failures=outcome.failures if outcome else 0,
                    # Finite values only, train metrics as well as holdout ones: the replies'
                    # metrics were checked, but a user's own averaging may still yield NaN/Inf,
                    # which the registry cannot store (PostgreSQL refuses it in JSON).
                    metrics={
                        **{
                            f"train_{k}": v
                            for k, v in (outcome.train_metrics if outcome else {}).items()
                            if np.isfinite(v)
                        },
                        **{k: v for k, v in metrics.items() if np.isfinite(v)},
                    },
                    duration_s=time.monotonic() - (outcome.started if outcome else self._round_started),
                )
            )
            log.info("round %d: holdout %s", server_round, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        return {k: v for k, v in metrics.items() if np.isfinite(v)}

    # -- after aggregation -----------------------------------------------------------

    def finish(self, state: dict[str, torch.Tensor] | None) -> ModelManifest | None:
        """Fine-tune, evaluate, gate, release. Returns the published manifest (None if gated)."""
        if state is None:
            raise ServerError("no round produced an aggregate: no agent returned a sound update")
        self.model.load_state_dict(state)
        if self.finetune is not None and len(self.finetune.x):
            cfg = fraud.TrainConfig(
                epochs=self.settings.finetune_epochs,
                seed=self.settings.seed,
                device=resolve_device(self.settings.device),
            )
            result = fraud.train(self.model, self.finetune.x, self.finetune.y, cfg)
            log.info("fine-tuned on %d server records on %s: loss %.4f", len(self.finetune.x), cfg.device, result.loss)
        metrics = fraud.evaluate(self.model, self.holdout.x, self.holdout.y)
        finite = {k: v for k, v in metrics.items() if np.isfinite(v)}
        decision = promotion_gate(finite, self.parent.metrics, self.settings.max_auprc_regression)
        self.registry.audit(
            "server", "run.gate", {"run_id": self.run_id, "publish": decision.publish, "reason": decision.reason}
        )
        if not decision.publish:
            log.warning("run %s not published: %s", self.run_id, decision.reason)
            self.registry.finish_run(self.run_id, "failed", finished=time.time(), error=f"gate: {decision.reason}")
            return None
        manifest = self._release(finite)
        save_state(self.settings.data_dir, self.settings.task, manifest.version, self.model.state_dict())
        self.registry.finish_run(self.run_id, "succeeded", finished=time.time(), published_version=manifest.version)
        return manifest

    def _release(self, metrics: dict[str, float]) -> ModelManifest:
        key = load_private_key(self.settings.signing_key)
        client = MqttClient(
            BrokerAddress.parse(self.settings.broker_url),
            f"fedforge-release-{self.run_id}",
            persistent=False,
            **self.settings.mqtt_tls(),
        )
        client.start()
        try:
            return release_model(
                self.registry,
                client,
                key,
                self.model,
                self.parent.feature_spec,
                metrics,
                parent_version=self.parent.version,
                training_run_id=self.run_id,
                x_holdout=self.holdout.x,
                fleet=self.settings.fleet,
                task=self.settings.task,
                public_url=self.settings.public_url,
            )
        finally:
            client.stop()

    def fail(self, exc: BaseException) -> None:
        # fedforge's own errors say what went wrong (e.g. how many agents joined of how many needed).
        detail = (
            str(exc)
            if isinstance(exc, ServerError)
            else "".join(traceback.format_exception_only(type(exc), exc)).strip()
        )
        log.error("run %s failed: %s", self.run_id, detail)
        self.registry.finish_run(self.run_id, "failed", finished=time.time(), error=detail[:2000])
