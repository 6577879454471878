"""The names of the aggregation strategies a training run may ask for: the one list to check against.

Torch- and Flower-free, so the API validates a request without importing either. The
ServerApp maps each name to its Flower strategy (``fedavg`` -> SanitizedFedAvg with the
one-pass kernels of server.aggregation; the others -> strategies.CatalogStrategy).
"""

from __future__ import annotations

from typing import Literal, get_args

StrategyName = Literal["fedavg", "fedprox", "median", "trimmed-mean", "krum", "multi-krum"]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)
DEFAULT_STRATEGY = "fedavg"


def is_strategy(name: str) -> bool:
    return name in STRATEGY_NAMES
