"""Settings of the cloud server process (TOML file + ``FEDFORGE_*`` environment).

Paths that live under ``data_dir`` (database, signing keys) default from it, so a single
``data_dir`` setting is enough for a demo while production overrides each one.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from server.federation.catalog import StrategyName
from shared.config import FedforgeSettings, load_settings
from shared.errors import ConfigError
from shared.mqtt import TlsKwargs, tls_kwargs

# The longest any duration setting may be. Each one ends up added to a clock, multiplied by a
# round count or put in a signed command's canonical JSON, where an infinite (or absurdly
# large, overflowing) value fails far from the config, as a 500 or a failed run.
MAX_DURATION_S = 366 * 86400.0


def default_data_dir() -> Path:
    return platformdirs.user_data_path("fedforge") / "server"


class ServerSettings(FedforgeSettings):
    # inf and nan parse from TOML and the environment; no float setting here has a use for them.
    model_config = SettingsConfigDict(allow_inf_nan=False)

    fleet: str = "default"
    task: str = "fraud"
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    broker_url: str = "mqtt://127.0.0.1:1883"
    # Mutual TLS (mqtts:// only): the CA that signed the broker, and the server's certificate
    # (CN = fedforge-server: the broker's ACL keys on it) with its key. Checked at start.
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # Base URL agents use for large-file HTTPS downloads; None leaves ``url`` out of manifests.
    public_url: str | None = None
    signing_key: Path = Path()
    signing_public_key: Path = Path()
    superlink_host: str = "127.0.0.1"
    superlink_port: int = Field(default=9092, ge=0, le=65535)
    # Flower node authentication (opt-in): only SuperNodes whose public key was registered
    # (`fedforge devices register`) may join, and a restarted SuperNode keeps its node id.
    # Flower refuses it without TLS, so it needs the SuperLink's CA, certificate and key;
    # the SuperLink's state (registered keys) then lives in data_dir/superlink.db.
    supernode_auth: bool = False
    superlink_ca_file: Path | None = None
    superlink_cert_file: Path | None = None
    superlink_key_file: Path | None = None
    min_agents: int = Field(default=1, ge=1)
    rounds: int = Field(default=3, ge=1)
    round_timeout_s: float = Field(default=600.0, gt=0, le=MAX_DURATION_S)
    # Before round 1 the ServerApp waits up to this long for a SuperNode from every online,
    # non-revoked device of the fleet: agents with federation_mode = "on_demand" (the agent's
    # default) start theirs only when the run's federation call reaches them (a few seconds).
    # It goes on as soon as they are all there. It is also the bound on waiting for min_agents:
    # fewer connected after it, before round 1 or any later round, and the run fails ("too few
    # agents: 1 of 3 needed joined within 30 s") instead of waiting forever.
    join_wait_s: float = Field(default=30.0, ge=0, le=MAX_DURATION_S)
    # The aggregation rule of runs that name none (`fedforge train --strategy`, the API's
    # POST /api/runs and the dashboard name one): server/federation/catalog.py.
    strategy: StrategyName = "fedavg"
    # "fedforge": one train exchange per round, replies pulled every 0.1 s (rounds.py);
    # "flower": Flower's Strategy.start (train + evaluate exchanges, 3 s polls), for reference.
    round_exchange: Literal["fedforge", "flower"] = "fedforge"
    # Promotion gate: a candidate may lose at most this much holdout AUPRC to its parent.
    max_auprc_regression: float = Field(default=0.0, ge=0)
    # The Flower app's home (installed FABs, CLI connection config); defaults under data_dir.
    flwr_home: Path | None = None
    bootstrap_data: Path | None = None
    holdout_data: Path | None = None
    bootstrap_epochs: int = Field(default=5, ge=1)
    finetune_epochs: int = Field(default=1, ge=0)
    local_epochs: int = Field(default=1, ge=1)
    # Small batches: an agent may hold only a few thousand labelled records per round.
    local_batch_size: int = Field(default=64, ge=1)
    local_lr: float = Field(default=1e-3, gt=0)
    device: str = "auto"
    # FedAvg reproduces Flower's aggregate_arrayrecords bit for bit on the CPU; a GPU (device
    # "auto"/"cuda") rounds differently, within float32 rounding. true keeps every round on the
    # CPU, so every round has Flower's bits (docs/aggregation.md).
    aggregation_exact: bool = False
    seed: int = 0
    # A device whose last status is older than this is shown offline even without a will.
    online_window_s: float = Field(default=120.0, gt=0, le=MAX_DURATION_S)
    # Operator sessions (docs/api.md): lifetime, and the cookie's Secure flag (on behind HTTPS).
    session_ttl_s: float = Field(default=12 * 3600.0, gt=0, le=MAX_DURATION_S)
    cookie_secure: bool = False
    # Failed logins allowed per user name and per client address in the window, then 429.
    login_max_failures: int = Field(default=10, ge=1)
    login_window_s: float = Field(default=300.0, gt=0, le=MAX_DURATION_S)
    # /metrics is open by default (scrapers, no secrets: counts and latencies); when true it
    # needs a viewer token (Prometheus `authorization: credentials: fft_...`).
    metrics_require_auth: bool = False
    # How long a signed rollback command stays valid for agents that were offline when it was sent.
    command_ttl_s: float = Field(default=7 * 86400.0, gt=0, le=MAX_DURATION_S)

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        """Fill database and key paths from ``data_dir`` unless given explicitly."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        data_dir = Path(out.get("data_dir") or default_data_dir())
        out["data_dir"] = data_dir
        if not out.get("database_url"):
            out["database_url"] = f"sqlite:///{data_dir / 'registry.db'}"
        if not out.get("signing_key"):
            out["signing_key"] = data_dir / "keys" / "operator.pem"
        if not out.get("signing_public_key"):
            out["signing_public_key"] = data_dir / "keys" / "operator.pub.pem"
        return out

    @model_validator(mode="after")
    def _check_mqtt_tls(self) -> ServerSettings:
        self.mqtt_tls()  # a bad TLS file stops the server (and the ServerApp) at start
        return self

    @model_validator(mode="after")
    def _check_superlink_tls(self) -> ServerSettings:
        """Refuse half a TLS setup here: Flower would only fail later, inside the supervised SuperLink."""
        files = {
            "superlink_ca_file": self.superlink_ca_file,
            "superlink_cert_file": self.superlink_cert_file,
            "superlink_key_file": self.superlink_key_file,
        }
        given = {name: path for name, path in files.items() if path is not None}
        if self.supernode_auth and len(given) < len(files):
            missing = ", ".join(name for name in files if name not in given)
            raise ConfigError(f"supernode_auth needs TLS on the SuperLink (Flower refuses it otherwise): set {missing}")
        if given and len(given) < len(files):
            raise ConfigError("superlink_ca_file, superlink_cert_file and superlink_key_file must be set together")
        for name, path in given.items():
            try:
                path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{name} {path} cannot be read: {exc.strerror or exc}") from None
        if given:
            try:
                context = ssl.create_default_context(cafile=str(self.superlink_ca_file))
                context.load_cert_chain(str(self.superlink_cert_file), str(self.superlink_key_file))
            except ssl.SSLError as exc:
                raise ConfigError(f"SuperLink TLS files are not a usable CA / certificate / key: {exc}") from None
        return self

    def run_lifetime_s(self, rounds: int) -> float:
        """How long a run of ``rounds`` may take at most: its federation call expires after it."""
        return self.join_wait_s + rounds * self.round_timeout_s + 600.0

    @property
    def superlink_tls(self) -> bool:
        return self.superlink_ca_file is not None

    def mqtt_tls(self) -> TlsKwargs:
        """The TLS keyword arguments of every MqttClient the server side builds."""
        return tls_kwargs(self.broker_url, self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)


def load_server_settings(path: Path | None = None, **overrides: Any) -> ServerSettings:
    return load_settings(ServerSettings, path, **overrides)
