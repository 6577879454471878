"""A twin scenario: one TOML file, validated in full before anything starts.

Every field has a default except what makes a scenario a scenario (its name), so a file
states only what it changes. Unknown keys are errors (a misspelt ``aplha`` must not fall
back silently to the default), and every error names the field and the file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.federation.catalog import StrategyName
from shared.bundle import DEFAULT_CHUNK_SIZE
from shared.errors import ConfigError

RAY_ADDRESS_ENV = "FEDFORGE_TWIN_RAY_ADDRESS"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    task: Literal["fraud"] = "fraud"
    # "fraud": the real set, cached by `fedforge data fetch fraud`; "synthetic": generated, same schema.
    dataset: Literal["fraud", "synthetic"] = "synthetic"
    rows: int = Field(default=50_000, ge=100, le=5_000_000)  # synthetic only
    fraud_rate: float = Field(default=0.02, gt=0, lt=0.5)  # synthetic only
    bootstrap_fraction: float = Field(default=0.05, ge=0, lt=0.5)
    holdout_fraction: float = Field(default=0.15, gt=0, lt=0.5)


class PartitionSpec(_Strict):
    # natural: by a key of the data (the fraud set has none); dirichlet: Dirichlet(alpha) over
    # labels and sizes; iid: equal random shares.
    kind: Literal["iid", "dirichlet", "natural"] = "dirichlet"
    alpha: float = Field(default=0.5, gt=0, le=1e4)
    key: str = ""


class DeviceProfile(_Strict):
    name: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)
    compute_samples_per_s: float = Field(default=5_000.0, gt=0)
    availability: float = Field(default=1.0, ge=0, le=1)  # chance to be online in a round
    dropout: float = Field(default=0.0, ge=0, le=1)  # chance to vanish mid-round once started
    uplink_mbps: float = Field(default=10.0, gt=0)
    downlink_mbps: float = Field(default=50.0, gt=0)
    latency_ms: float = Field(default=50.0, ge=0)


class StrategySpec(_Strict):
    name: StrategyName = "fedavg"
    fraction: float = Field(default=1.0, gt=0, le=1)  # share of devices asked each round
    proximal_mu: float = Field(default=0.01, ge=0)
    trim_beta: float = Field(default=0.1, ge=0, lt=0.5)
    byzantine: int = Field(default=0, ge=0)  # f assumed by krum / multi-krum
    keep: int = Field(default=0, ge=0)


class ByzantineSpec(_Strict):
    share: float = Field(default=0.0, ge=0, lt=1)
    attack: Literal["sign-flip", "gaussian", "nan"] = "sign-flip"
    scale: float = Field(default=5.0, gt=0)  # sign-flip: the flipped update is scaled by this
    sigma: float = Field(default=1.0, gt=0)  # gaussian: noise added to every weight


class ModelSpec(_Strict):
    precision: Literal["fp32", "fp16", "int8"] = "fp32"  # of the exchanged model and updates
    initial: Literal["bootstrap", "random"] = "bootstrap"
    bootstrap_epochs: int = Field(default=2, ge=1, le=100)


class NetworkSpec(_Strict):
    round_timeout_s: float = Field(default=120.0, gt=0)  # what the server waits for a dropped device
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1024)  # the release publisher's MQTT chunks
    broker_egress_mbps: float = Field(default=1_000.0, gt=0)


class RuntimeSpec(_Strict):
    ray_address: str = ""  # empty: FEDFORGE_TWIN_RAY_ADDRESS, then RAY_ADDRESS, else a local Ray
    cpus_per_device: float = Field(default=1.0, gt=0)  # Ray resources per ClientApp actor
    actors: int = Field(default=0, ge=0)  # 0: as many as the cluster's CPUs allow


class Scenario(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = Field(default=0, ge=0)
    devices: int = Field(default=10, ge=1, le=100_000)
    rounds: int = Field(default=3, ge=1, le=1_000)
    local_epochs: int = Field(default=1, ge=1, le=100)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    data: DataSpec = DataSpec()
    partition: PartitionSpec = PartitionSpec()
    profiles: tuple[DeviceProfile, ...] = (DeviceProfile(name="default"),)
    strategy: StrategySpec = StrategySpec()
    byzantine: ByzantineSpec = ByzantineSpec()
    model: ModelSpec = ModelSpec()
    network: NetworkSpec = NetworkSpec()
    runtime: RuntimeSpec = RuntimeSpec()

    @model_validator(mode="after")
    def _coherent(self) -> Scenario:
        if not self.profiles:
            raise ValueError("profiles: give at least one device profile")
        names = [p.name for p in self.profiles]
        if len(set(names)) != len(names):
            raise ValueError(f"profiles: names must be unique, got {names}")
        if self.partition.kind == "natural":
            raise ValueError(
                f"partition.kind = 'natural': the {self.data.task} data set has no natural device key; "
                "use 'dirichlet' (non-IID) or 'iid'"
            )
        pool = 1.0 - self.data.bootstrap_fraction - self.data.holdout_fraction
        if self.data.dataset == "synthetic" and self.data.rows * pool < self.devices:
            raise ValueError(
                f"data.rows = {self.data.rows} leaves {int(self.data.rows * pool)} rows for {self.devices} devices; "
                "every device needs at least one"
            )
        if self.model.initial == "bootstrap" and self.data.bootstrap_fraction == 0:
            raise ValueError("model.initial = 'bootstrap' needs data.bootstrap_fraction > 0")
        return self

    def ray_address(self) -> str | None:
        """The Ray cluster to run on: the scenario's, else the environment's, else None (local)."""
        for value in (self.runtime.ray_address, os.environ.get(RAY_ADDRESS_ENV), os.environ.get("RAY_ADDRESS")):
            if value:
                return value
        return None


def _explain(exc: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid scenario"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_scenario(data: dict[str, object], where: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, where)) from None


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; every problem is a ConfigError naming the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, str(path))
