"""A whole fleet on one machine: broker, cloud server, N agents, replay, training runs.

The demo and the end-to-end tests drive the real processes (``fedforge server``,
``fedforge agent``, ``fedforge train``) exactly as an operator would, from config files
this module writes; nothing is imported in-process, so what works here works deployed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.errors import FedforgeError
from shared.net import free_port, wait_port
from shared.process import ManagedProcess, become_subreaper

log = logging.getLogger(__name__)


class FleetError(FedforgeError):
    """The local fleet did not reach the expected state."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_toml(path: Path, values: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None))
    return path


@dataclass
class AgentHandle:
    device_id: str
    data_dir: Path
    config: Path
    process: ManagedProcess


@dataclass
class LocalFleet:
    root: Path
    broker_url: str
    split_dir: Path
    n_agents: int = 3
    fleet: str = "demo"
    min_agents: int | None = None
    bootstrap_epochs: int = 3
    finetune_epochs: int = 1
    local_epochs: int = 1
    heartbeat_s: float = 2.0
    # Extra settings written into server.toml / every agent.toml, and extra environment for
    # the agent processes (benchmarks compare Flower's defaults with fedforge's round design).
    server_settings: dict[str, Any] = field(default_factory=dict)
    agent_settings: dict[str, Any] = field(default_factory=dict)
    agent_env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    superlink_port: int = field(default_factory=free_port)
    server: ManagedProcess | None = None
    agents: list[AgentHandle] = field(default_factory=list)
    # The API needs a credential: an admin API token made with `fedforge tokens create`.
    api_token: str | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.server_dir = self.root / "server"
        self.server_config = self.server_dir / "server.toml"
        self.api = f"http://127.0.0.1:{self.http_port}"
        become_subreaper()

    @property
    def device_ids(self) -> list[str]:
        return [f"device-{i + 1}" for i in range(self.n_agents)]

    # -- configuration -------------------------------------------------------------

    def write_configs(self) -> None:
        write_toml(
            self.server_config,
            {
                "fleet": self.fleet,
                "data_dir": str(self.server_dir),
                "broker_url": self.broker_url,
                "http_port": self.http_port,
                "superlink_port": self.superlink_port,
                "min_agents": self.min_agents or self.n_agents,
                "bootstrap_data": str(self.split_dir / "bootstrap.parquet"),
                "holdout_data": str(self.split_dir / "holdout.parquet"),
                "bootstrap_epochs": self.bootstrap_epochs,
                "finetune_epochs": self.finetune_epochs,
                "local_epochs": self.local_epochs,
                "round_timeout_s": 300.0,
                **self.server_settings,
            },
        )
        for device in self.device_ids:
            data_dir = self.root / "agents" / device
            write_toml(
                data_dir / "agent.toml",
                {
                    "device_id": device,
                    "fleet": self.fleet,
                    "broker_url": self.broker_url,
                    "data_dir": str(data_dir),
                    "trusted_keys": [str(self.server_dir / "keys" / "operator.pub.pem")],
                    "heartbeat_s": self.heartbeat_s,
                    "superlink_address": f"127.0.0.1:{self.superlink_port}",
                    **self.agent_settings,
                },
            )

    def _command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shared.cli", *args]

    # -- processes -----------------------------------------------------------------

    def cli(self, *args: str, stdin: str | None = None) -> list[dict[str, Any]]:
        """Run ``fedforge ARGS --config server.toml``; its JSON lines, or ``FleetError``."""
        proc = subprocess.run(
            self._command(*args, "--config", str(self.server_config)),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise FleetError(f"fedforge {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    def create_user(self, username: str, role: str, password: str | None = None) -> None:
        """An operator account in the server's registry, as `fedforge users create` makes it."""
        if password is None:
            self.cli("users", "create", username, "--role", role, "--no-password")
        else:
            self.cli("users", "create", username, "--role", role, "--password-stdin", stdin=password + "\n")

    def provision_api_token(self, username: str = "fleet-admin") -> str:
        """A token-only admin for this harness's own API calls (before the server starts)."""
        self.create_user(username, "admin")
        self.api_token = str(self.cli("tokens", "create", "--user", username, "--name", "local-fleet")[0]["token"])
        return self.api_token

    def start_server(self, timeout: float = 180.0) -> None:
        """Start the server and wait until its API answers and model v1 is published."""
        if self.api_token is None:
            self.provision_api_token()
        self.server = ManagedProcess(
            "fedforge-server",
            self._command("server", "--config", str(self.server_config)),
            log_path=self.root / "server.log",
            restart=False,
        )
        self.server.start()
        self.wait_for(lambda: bool(self.get("/api/models")), timeout, "the server to publish model v1")
        if not wait_port(self.superlink_port, timeout=60):
            raise FleetError(f"the SuperLink does not listen on {self.superlink_port}; see {self.server_dir}/logs")

    def start_agents(self) -> None:
        env = {**os.environ, **self.agent_env} if self.agent_env else None
        for device in self.device_ids:
            data_dir = self.root / "agents" / device
            config = data_dir / "agent.toml"
            process = ManagedProcess(
                f"agent-{device}",
                self._command("agent", "--config", str(config)),
                env=env,
                log_path=data_dir / "agent.log",
                restart=False,
            )
            process.start()
            self.agents.append(AgentHandle(device, data_dir, config, process))

    def stop_agents(self) -> None:
        for agent in reversed(self.agents):
            agent.process.stop(grace=15.0)
        self.agents.clear()

    def stop(self) -> None:
        self.stop_agents()
        if self.server is not None:
            self.server.stop(grace=15.0)
            self.server = None

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation ---------------------------------------------------------------

    @property
    def auth_headers(self) -> dict[str, str]:
        return {} if self.api_token is None else {"Authorization": f"Bearer {self.api_token}"}

    def get(self, path: str) -> Any:
        try:
            response = httpx.get(self.api + path, timeout=5.0, headers=self.auth_headers)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """An action through the API; a refused one raises ``FleetError`` with the server's reason."""
        response = httpx.post(self.api + path, json=body or {}, timeout=120.0, headers=self.auth_headers)
        if response.status_code >= 400:
            raise FleetError(f"POST {path} -> {response.status_code}: {response.text[:500]}")
        return response.json()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server is not None and not self.server.running():
                raise FleetError(f"the server exited while waiting for {what}; see {self.root / 'server.log'}")
            if predicate():
                return
            time.sleep(poll)
        raise FleetError(f"timed out after {timeout:.0f} s waiting for {what}")

    def devices(self) -> dict[str, dict[str, Any]]:
        listed = self.get("/api/devices") or []
        return {d["device_id"]: d for d in listed if d["device_id"] in self.device_ids}

    def latest_version(self) -> int | None:
        models = self.get("/api/models") or []
        published = [m["version"] for m in models if m.get("stage") == "published"]
        return max(published) if published else None

    def wait_serving(self, version: int, timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        def all_serving() -> bool:
            devices = self.devices()
            return len(devices) == self.n_agents and all(
                d.get("serving_version") == version and d.get("online") for d in devices.values()
            )

        self.wait_for(all_serving, timeout, f"all {self.n_agents} agents to serve v{version}")
        return self.devices()

    def wait_labelled(self, minimum: int, timeout: float = 300.0) -> None:
        def enough() -> bool:
            devices = self.devices()
            return len(devices) == self.n_agents and all(
                int(d.get("counters", {}).get("labelled", 0)) >= minimum for d in devices.values()
            )

        self.wait_for(enough, timeout, f"every agent to hold >= {minimum} labelled records")

    # -- actions -------------------------------------------------------------------

    def start_run(self, rounds: int, timeout: float = 900.0, strategy: str = "fedavg") -> dict[str, Any]:
        """A training run through the API (POST /api/runs), waited for; the run with its rounds."""
        body = {"rounds": rounds, "strategy": strategy, "min_agents": self.min_agents or self.n_agents}
        run_id = str(self.post("/api/runs", body)["run_id"])
        finished: dict[str, Any] = {}

        def done() -> bool:
            run = self.get(f"/api/runs/{run_id}")
            if run is not None and run["status"] != "running":
                finished.update(run)
            return bool(finished)

        self.wait_for(done, timeout, f"training run {run_id} to finish", poll=2.0)
        return finished

    def train(self, rounds: int, timeout: float = 900.0) -> dict[str, Any]:
        proc = subprocess.run(
            self._command(
                "train", "--config", str(self.server_config), "--rounds", str(rounds), "--timeout", str(timeout)
            ),
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            check=False,
        )
        (self.root / "train.log").write_text(proc.stderr)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise FleetError(f"fedforge train printed no summary (exit {proc.returncode}); see {self.root}/train.log")
        summary: dict[str, Any] = json.loads(lines[-1])
        summary["exit_code"] = proc.returncode
        return summary


def agent_store_state(db_path: Path) -> dict[str, Any]:
    """Read an agent's own store (read-only): what it installed, quarantined and scored."""
    from edge_agent.store.sqlite import SqliteAgentStore

    store = SqliteAgentStore(db_path, readonly=True)
    try:
        installed = [e.version for e in store.model_history(50) if e.event == "installed"]
        return {"installed_latest": installed[0] if installed else None, **store.counts()}
    finally:
        store.close()
