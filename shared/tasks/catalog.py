"""The tasks fedforge knows, by name, without importing torch."""

from __future__ import annotations

from collections.abc import Callable

from shared.errors import ConfigError
from shared.features import FeatureSpec
from shared.tasks import fraud_spec

_BASE_SPECS: dict[str, Callable[[], FeatureSpec]] = {fraud_spec.TASK: fraud_spec.base_feature_spec}


def task_names() -> tuple[str, ...]:
    return tuple(_BASE_SPECS)


def base_feature_spec(task: str) -> FeatureSpec:
    try:
        return _BASE_SPECS[task]()
    except KeyError:
        raise ConfigError(f"unknown task {task!r}; known: {', '.join(task_names())}") from None
