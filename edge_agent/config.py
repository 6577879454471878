"""Settings of one edge agent, read from TOML and ``FEDFORGE_*`` environment variables."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shared.config import FedforgeSettings, load_settings
from shared.errors import ConfigError
from shared.mqtt import TlsKwargs, tls_kwargs


class AgentSettings(FedforgeSettings):
    """One agent = one device identity in one fleet, serving one task."""

    device_id: str = Field(min_length=1, max_length=64)
    fleet: str = "default"
    task: str = "fraud"
    broker_url: str = "mqtt://127.0.0.1:1883"
    # Mutual TLS (mqtts:// only): the CA that signed the broker, and this device's certificate
    # (CN = device_id: the broker's ACL keys on it) with its key. Checked at start.
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    data_dir: Path
    # Operator public keys (PEM): only manifests signed by one of these are installed.
    trusted_keys: list[Path] = Field(default_factory=list)
    heartbeat_s: float = Field(default=10.0, gt=0)
    # Flower Fleet API "host:port"; used by edge_agent.federation, not by the agent core.
    superlink_address: str | None = None
    supernode_port: int | None = None
    # How the SuperNode runs the ClientApp (edge_agent/federation/supernode.py): "in_node"
    # (default) in a worker thread of the SuperNode's own process, the app and torch kept
    # loaded between messages; "worker" in a second long-running process, which keeps the
    # node up if the ClientApp crashes its interpreter but adds an interpreter and a copy of
    # flwr (~110-120 MB at a round's peak, benchmarks/README-round.md); "subprocess" is
    # Flower's default, a new process per message (slower rounds, see docs).
    clientapp_isolation: Literal["in_node", "worker", "subprocess"] = "in_node"
    # The ClientApp (and torch) is dropped after this many seconds without a message, so an
    # agent between training runs idles without torch; None keeps it loaded. "worker" mode
    # re-executes the worker; "in_node" mode restarts the SuperNode (it rejoins the
    # SuperLink, under a new node id without a node key), and only with federation_mode =
    # "always": on demand the SuperNode stops when the run ends.
    worker_idle_exit_s: float | None = Field(default=120.0, gt=0)
    # The SuperNode's idle poll of the SuperLink (flwr 1.42 sleeps a fixed 3 s when no message
    # is waiting): every ``supernode_fast_poll_s`` for ``supernode_fast_window_s`` after the
    # node last received or sent a message, so a round's next message is picked up at once,
    # then Flower's 3 s again, so an idle fleet does not load the SuperLink. While the window
    # is open each node sends the SuperLink 1/fast_poll_s requests a second (stock: 1/3).
    # 0 keeps Flower's waits (edge_agent/federation/supernode_launcher.py).
    supernode_fast_poll_s: float = Field(default=0.2, gt=0, le=3.0)
    supernode_fast_window_s: float = Field(default=30.0, ge=0)
    # "launcher" (default): Flower's SuperNode entry point behind fedforge's launcher, which
    # adds the fast window above, stops the node when the agent is gone (even SIGKILLed) and
    # holds early signals until Flower can exit on them. "flower": Flower's
    # ``flower-supernode`` exactly as shipped (its fixed waits, no parent monitor; the fast
    # window does not apply): the anchor of the benchmarks, and a fallback should a Flower
    # upgrade break the launcher. "in_node" isolation needs the launcher.
    supernode_entry: Literal["launcher", "flower"] = "launcher"
    # "on_demand" (default): the SuperNode (and its worker) run only while the server's signed
    # federation call for a training run stands (edge_agent/federation/on_demand.py), so
    # between runs the agent idles alone: ~100 MB for its whole tree against ~245 MB with an
    # always-on SuperNode (benchmarks/results.md, figure 8b; the goal is <= 150 MB).
    # Edge devices are memory-bound and runs are occasional. It needs trusted_keys (the call
    # is signed) and the broker (the call comes over MQTT). "always": they run for as long as
    # the agent, polling the SuperLink every 3 s between runs, and need neither.
    federation_mode: Literal["always", "on_demand"] = "on_demand"
    # on_demand: seconds the SuperNode stays up once no open call needs it (the run ended,
    # or its call expired), so back-to-back runs reuse it; then it and its worker stop.
    federation_idle_stop_s: float = Field(default=15.0, ge=0)
    # Flower node authentication (opt-in, needs TLS): the CA that signed the SuperLink, and
    # this device's private key (EC P-384, OpenSSH format; created with its .pub beside it on
    # first start). The operator registers the .pub: `fedforge devices register`.
    superlink_ca_file: Path | None = None
    supernode_key: Path | None = None
    # Records scored, stored and published as one chunk (one ONNX call, one prediction
    # message). A flush (ingest.FLUSH_BYTES of payloads) holds ~330 JSON records or ~1100
    # of binary frames; at 256 it was cut in two to five chunks, and each chunk's fixed
    # costs (the call, the drift pass, the message and its PUBACK) came to a few % of
    # figure 3b's loop (2.5 % of its instructions before counting the MQTT side).
    max_batch: int = Field(default=1024, ge=1, le=100_000)
    # Scores at or above this are published as alerts.
    alert_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    # Seconds without a new chunk before a download is abandoned (retried on re-delivery).
    download_timeout_s: float = Field(default=60.0, gt=0)
    # FeatureSpec (JSON) used for cleaning until the first model (whose manifest carries one)
    # is installed; without it the task's built-in base spec is used.
    feature_spec_path: Path | None = None
    # Undelivered prediction batches kept on disk; beyond this the oldest are dropped (counted, logged).
    outbox_max_rows: int = Field(default=10_000, ge=1)
    # Size the store (SQLite file + WAL) may reach before shipped data is evicted, oldest first.
    disk_budget_mb: float = Field(default=512.0, gt=0)
    # How often the budget is checked (a stat of two files) and the outbox re-sent after a reconnect.
    disk_check_s: float = Field(default=30.0, gt=0)

    # Prometheus endpoint (GET /metrics): off unless a port is set; loopback unless a host is set,
    # since it is unauthenticated (scrape it through the device's own exporter or a tunnel).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _check_supernode_entry(self) -> AgentSettings:
        if self.supernode_entry == "flower" and self.clientapp_isolation == "in_node":
            raise ConfigError(
                'clientapp_isolation "in_node" runs the ClientApp inside fedforge\'s launcher: '
                'with supernode_entry "flower" choose "worker" or "subprocess"'
            )
        return self

    @model_validator(mode="after")
    def _check_mqtt_tls(self) -> AgentSettings:
        self.mqtt_tls()  # a bad TLS file stops the agent at start, not at its first connect
        return self

    @model_validator(mode="after")
    def _check_superlink_tls(self) -> AgentSettings:
        """Flower refuses a node key over plaintext; say so at start rather than in supernode.log."""
        if self.supernode_key is not None and self.superlink_ca_file is None:
            raise ConfigError("supernode_key needs superlink_ca_file: Flower authenticates SuperNodes only over TLS")
        if self.superlink_ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(self.superlink_ca_file))
            except OSError as exc:
                raise ConfigError(f"superlink_ca_file {self.superlink_ca_file} cannot be read: {exc}") from None
        return self

    def mqtt_tls(self) -> TlsKwargs:
        """The TLS keyword arguments of the agent's MqttClient."""
        return tls_kwargs(self.broker_url, self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "agent.db"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def load_agent_settings(path: Path | None, **overrides: object) -> AgentSettings:
    """Settings from ``path`` (TOML) plus environment; raises ``ConfigError`` with the reason."""
    return load_settings(AgentSettings, path, **overrides)
