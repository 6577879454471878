"""The ``fraud`` task: credit-card transactions (ULB/Worldline), an MLP, and its training loop.

The same functions train on the edge (ClientApp), fine-tune in the cloud (ServerApp) and
run in the twin, so the three cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from shared.tasks.adam import Adam
from shared.tasks.fraud_spec import (
    ALERT_THRESHOLD,
    FEATURES,
    INPUT_NAME,
    LABEL,
    OUTPUT_NAME,
    PCA_COLUMNS,
    TASK,
    base_feature_spec,
)
from shared.tasks.metrics import binary_metrics

__all__ = [
    "ALERT_THRESHOLD",
    "FEATURES",
    "INPUT_NAME",
    "LABEL",
    "OUTPUT_NAME",
    "PCA_COLUMNS",
    "TASK",
    "FraudMLP",
    "ScoringHead",
    "TrainConfig",
    "TrainResult",
    "base_feature_spec",
    "build_model",
    "evaluate",
    "get_weights",
    "predict_proba",
    "set_weights",
    "train",
]


class FraudMLP(nn.Module):
    def __init__(self, width: int = len(FEATURES), hidden: tuple[int, int] = (64, 32)) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (n,)."""
        out: torch.Tensor = self.net(x).squeeze(-1)
        return out


class ScoringHead(nn.Module):
    """What is exported to ONNX: probabilities, shape (n, 1), so ORT callers get scores."""

    def __init__(self, model: FraudMLP) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x)).unsqueeze(-1)


def build_model(seed: int = 0) -> FraudMLP:
    torch.manual_seed(seed)
    return FraudMLP()


def get_weights(model: nn.Module) -> list[npt.NDArray[np.float32]]:
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[npt.NDArray[np.float32]]) -> None:
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"expected {len(keys)} arrays, got {len(weights)}")
    state = {k: torch.from_numpy(np.asarray(w, dtype=np.float32).copy()) for k, w in zip(keys, weights, strict=True)}
    model.load_state_dict(state, strict=True)


def pos_weight_for(labels: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> float:
    """Positive-class weight for BCE: sqrt of the imbalance, capped.

    The full ratio (~580 on this data) makes training unstable and over-alerts; its square
    root keeps gradient from the rare class without letting it dominate.
    """
    positives = float(np.sum(labels))
    negatives = float(len(labels)) - positives
    if positives <= 0:
        return 1.0
    return float(min(50.0, max(1.0, math.sqrt(negatives / positives))))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    proximal_mu: float = 0.0
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class TrainResult:
    loss: float
    examples: int
    steps: int


def train(model: FraudMLP, x: npt.NDArray[np.float32], y: npt.NDArray[np.floating], cfg: TrainConfig) -> TrainResult:
    """Mini-batch Adam on weighted BCE; with ``proximal_mu`` > 0 it is FedProx's local objective."""
    if len(x) == 0:
        return TrainResult(loss=float("nan"), examples=0, steps=0)
    device = torch.device(cfg.device)
    model.to(device).train()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32)).to(device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight_for(np.asarray(y)), device=device))
    opt = Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)  # not torch.optim: see adam.py
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else []
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    total, steps = 0.0, 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(xt), generator=gen).to(device)
        for start in range(0, len(xt), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            if anchor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
                loss = loss + 0.5 * cfg.proximal_mu * prox
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    model.to("cpu")
    return TrainResult(loss=total / max(steps, 1), examples=len(xt) * cfg.epochs, steps=steps)


@torch.no_grad()
def predict_proba(model: FraudMLP, x: npt.NDArray[np.float32], batch_size: int = 65_536) -> npt.NDArray[np.float32]:
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
        out.append(torch.sigmoid(model(xb)).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


def evaluate(model: FraudMLP, x: npt.NDArray[np.float32], y: npt.NDArray[np.floating]) -> dict[str, float]:
    scores = predict_proba(model, x)
    with torch.no_grad():
        logits = torch.logit(torch.from_numpy(scores).clamp(1e-7, 1 - 1e-7))
        loss = float(
            nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(np.asarray(y, np.float32)))
        )
    return {"loss": loss, "examples": float(len(y)), **binary_metrics(y, scores)}
