"""The twin's data: the server's bootstrap and holdout slices and one partition per device.

Built from the scenario alone (data set, sizes, partitioning, seed), so the driver and every
Ray actor build the same split without shipping rows; each process builds it once and keeps
it (``twin_data`` caches by scenario content). The split follows the fleet's: the earliest
slice bootstraps the server, the latest is the holdout, the middle goes to the devices.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped,unused-ignore]

from server.training.data import labels as label_column
from server.training.data import raw_features
from shared.datasets import fraud as fraud_data
from shared.datasets.split import dirichlet_partition, time_split
from shared.errors import DatasetError
from shared.features import FeatureSpec
from shared.tasks.fraud import base_feature_spec
from simulations.twin.scenario import Scenario

RawRows = npt.NDArray[np.float64]
Labels = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Part:
    raw: RawRows
    labels: Labels


@dataclass(frozen=True)
class TwinData:
    bootstrap: Part
    holdout: Part
    devices: tuple[Part, ...]

    @cached_property
    def spec(self) -> FeatureSpec:
        """Statistics fitted on the server's bootstrap slice, as in the fleet (the pool if there is none)."""
        fit_on = self.bootstrap.raw if len(self.bootstrap.raw) else self.pooled.raw
        return base_feature_spec().fit(fit_on)

    @cached_property
    def pooled(self) -> Part:
        """All device rows together: what a centralized baseline trains on."""
        return Part(np.concatenate([d.raw for d in self.devices]), np.concatenate([d.labels for d in self.devices]))

    @property
    def examples(self) -> npt.NDArray[np.int64]:
        return np.array([len(d.labels) for d in self.devices], dtype=np.int64)

    def labelled(self, partition_id: int, width: int) -> tuple[RawRows, Labels]:
        """The PartitionSource the edge ClientApp reads a virtual device's rows from."""
        if not 0 <= partition_id < len(self.devices):
            raise DatasetError(f"no virtual device {partition_id}: the scenario has {len(self.devices)}")
        part = self.devices[partition_id]
        if part.raw.shape[1] != width:
            raise DatasetError(f"device {partition_id} rows have {part.raw.shape[1]} features, the model {width}")
        return part.raw, part.labels


def _part(frame: pd.DataFrame) -> Part:
    return Part(raw_features(frame), label_column(frame))


def _frame(scenario: Scenario) -> pd.DataFrame:
    d = scenario.data
    if d.dataset == "fraud":
        path = fraud_data.cache_path()
        if not path.is_file():
            raise DatasetError(
                f"the real fraud set is not cached ({path}): run `fedforge data fetch fraud`, "
                'or set data.dataset = "synthetic"'
            )
        return fraud_data.load()
    return fraud_data.synthetic(d.rows, fraud_rate=d.fraud_rate, seed=scenario.seed)


def build_twin_data(scenario: Scenario) -> TwinData:
    d, p = scenario.data, scenario.partition
    split = time_split(_frame(scenario), d.bootstrap_fraction, d.holdout_fraction)
    n = scenario.devices
    if len(split.pool) < n:
        raise DatasetError(f"{len(split.pool)} device rows cannot fill {n} devices")
    pool = _part(split.pool)
    if p.kind == "iid":
        order = np.random.default_rng([scenario.seed, 11]).permutation(len(split.pool))
        rows = [np.sort(idx) for idx in np.array_split(order, n)]
    else:
        # Partition a two-column frame of row numbers (cheap to slice 1,000 times), then gather.
        light = pd.DataFrame({"Class": split.pool["Class"].to_numpy(), "Time": np.arange(len(split.pool))})
        parts = dirichlet_partition(light, n, alpha=p.alpha, seed=scenario.seed)
        rows = [part["Time"].to_numpy() for part in parts]
    devices = tuple(Part(pool.raw[r], pool.labels[r]) for r in rows)
    return TwinData(_part(split.bootstrap), _part(split.holdout), devices)


_cache: dict[str, TwinData] = {}
_cache_lock = threading.Lock()


def data_key(scenario: Scenario) -> str:
    return scenario.model_dump_json(include={"seed", "devices", "data", "partition"})


def twin_data(scenario: Scenario) -> TwinData:
    """This process's copy of the scenario's data, built on first use (one per actor)."""
    key = data_key(scenario)
    with _cache_lock:
        data = _cache.get(key)
        if data is None:
            data = build_twin_data(scenario)
            _cache.clear()  # one scenario at a time per process: do not hoard memory
            _cache[key] = data
        return data
