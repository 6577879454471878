"""A federated run hosted by the process the ServerApp runs in: the digital twin's hook.

In the fleet, the ServerApp opens a ``TrainingRun`` from the server's settings (registry,
holdout, signing key, broker). In the twin, Flower's Simulation Engine runs the same
ServerApp in a thread of the twin's own process; the twin installs a run here first, and
the ServerApp drives it with the same strategy loop instead of opening a training run.
Nothing installs a run in a deployed ServerApp process, so its behaviour is unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from flwr.serverapp.strategy import Strategy

ConfigValue = int | float | str | bytes | bool | list[int] | list[float] | list[str] | list[bytes] | list[bool]
MetricValue = int | float | list[int] | list[float]


class FederatedRun(Protocol):
    """What the ServerApp needs from a run: TrainingRun in the fleet, the twin's run in simulation."""

    @property
    def rounds(self) -> int: ...

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def round_timeout_s(self) -> float: ...

    def strategy(self) -> Strategy: ...

    def train_config(self) -> dict[str, ConfigValue]: ...

    def evaluate_round(self, server_round: int, state: dict[str, torch.Tensor]) -> dict[str, MetricValue]: ...

    def finish(self, state: dict[str, torch.Tensor] | None) -> object: ...

    def fail(self, exc: BaseException) -> None: ...


_lock = threading.Lock()
_hosted: FederatedRun | None = None


@contextmanager
def hosting(run: FederatedRun) -> Iterator[FederatedRun]:
    """Install ``run`` for the ServerApp of this process while the block runs."""
    global _hosted
    with _lock:
        if _hosted is not None:
            raise RuntimeError("a federated run is already hosted in this process")
        _hosted = run
    try:
        yield run
    finally:
        with _lock:
            _hosted = None


def hosted_run() -> FederatedRun | None:
    return _hosted
