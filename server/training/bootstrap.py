"""Model v1: fitted and trained centrally on the cloud's bootstrap slice.

The FeatureSpec statistics fitted here travel in every manifest and are what the edge
cleans with; later federated versions keep them so edge and cloud transform identically.
"""

from __future__ import annotations

import logging

import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import torch

from server.training.data import check_columns, labels, model_inputs, raw_features
from shared.errors import DatasetError
from shared.features import FeatureSpec
from shared.tasks.fraud import FraudMLP, TrainConfig, base_feature_spec, build_model, evaluate, train

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """'auto' means the GPU when there is one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def train_bootstrap_model(
    bootstrap_df: pd.DataFrame, holdout_df: pd.DataFrame, epochs: int, seed: int, device: str = "cpu"
) -> tuple[FraudMLP, FeatureSpec, dict[str, float]]:
    """Fit the spec on the bootstrap slice, train on it, evaluate on the holdout."""
    check_columns(bootstrap_df, "bootstrap data")
    check_columns(holdout_df, "holdout data")
    if len(bootstrap_df) == 0 or len(holdout_df) == 0:
        raise DatasetError("bootstrap and holdout data must both be non-empty")
    spec = base_feature_spec().fit(raw_features(bootstrap_df))
    x, y = model_inputs(spec, bootstrap_df), labels(bootstrap_df)
    model = build_model(seed)
    result = train(model, x, y, TrainConfig(epochs=epochs, seed=seed, device=resolve_device(device)))
    metrics = evaluate(model, model_inputs(spec, holdout_df), labels(holdout_df))
    log.info(
        "bootstrap model: %d examples, %d epochs, train loss %.4f, holdout %s",
        len(x),
        epochs,
        result.loss,
        {k: round(v, 4) for k, v in metrics.items()},
    )
    return model, spec, metrics
