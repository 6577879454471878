"""The names of the aggregation strategies a training run may ask for: the one list to check against.

Torch- and Flower-free, so the API validates a request without importing either. The
ServerApp maps each name to its Flower strategy (today: ``fedavg`` -> SanitizedFedAvg).
"""

from __future__ import annotations

STRATEGY_NAMES: tuple[str, ...] = ("fedavg",)
DEFAULT_STRATEGY = "fedavg"


def is_strategy(name: str) -> bool:
    return name in STRATEGY_NAMES
