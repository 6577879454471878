"""The Flower adapter of the cloud: the supervised SuperLink, the app directory, and runs.

The Flower app directory holds only a ``pyproject.toml``; its components name modules of
the installed fedforge package, so the FAB that ``flwr run`` builds is tiny and the code
that runs is exactly the code installed beside the server. Facts this relies on (flwr
1.42): one HTTP port carries the Fleet, Control and Runtime APIs; the daemons find
``flower-superexec`` on PATH; ``flwr run``/``flwr log`` exit 0 even when a run fails, so
success is read from ``flwr ls`` and the registry.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.config import ServerSettings
from server.errors import ServerError
from server.federation.catalog import DEFAULT_STRATEGY, STRATEGY_NAMES, is_strategy
from shared.flower_env import flower_env
from shared.flower_env import venv_executable as executable
from shared.process import ManagedProcess

log = logging.getLogger(__name__)

CONNECTION = "fedforge"
APP_CONFIG_KEYS = ("num-rounds", "min-agents", "strategy", "server-config", "training-run-id")

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedforge-flywheel"
version = "1.0.0"
description = "fedforge: federated training of the fleet's task model"
license = "Apache-2.0"
dependencies = ["flwr==1.42.0"]

[tool.flwr.app]
publisher = "fedforge"

[tool.flwr.app.components]
serverapp = "server.federation.server_app:app"
clientapp = "edge_agent.federation.client_app:app"

[tool.flwr.app.config]
num-rounds = 1
min-agents = 1
strategy = "fedavg"
server-config = ""
training-run-id = ""
"""


class FlowerRunError(ServerError):
    """A Flower run could not be submitted or did not complete."""


def flwr_home(settings: ServerSettings) -> Path:
    return settings.flwr_home or settings.data_dir / "flwr"


def superlink_tls_args(settings: ServerSettings) -> list[str]:
    """TLS and node-authentication flags: ``--insecure`` unless the SuperLink has certificates.

    With node authentication the SuperLink keeps its state in a database file: registered
    keys (and so node ids) must survive the supervisor restarting a SuperLink that died.
    """
    if not settings.superlink_tls:
        return ["--insecure"]
    argv = [
        "--ssl-ca-certfile",
        str(settings.superlink_ca_file),
        "--ssl-certfile",
        str(settings.superlink_cert_file),
        "--ssl-keyfile",
        str(settings.superlink_key_file),
    ]
    if settings.supernode_auth:
        argv += ["--enable-supernode-auth", "--database", str(settings.data_dir / "superlink.db")]
    return argv


def superlink_process(settings: ServerSettings) -> ManagedProcess:
    home = flwr_home(settings)
    (settings.data_dir / "logs").mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    argv = [executable("flower-superlink"), *superlink_tls_args(settings)]
    argv += ["--host", settings.superlink_host, "--port", str(settings.superlink_port)]
    return ManagedProcess(
        "flower-superlink", argv, env=flower_env(home), log_path=settings.data_dir / "logs" / "superlink.log"
    )


class SuperLinkCompanion:
    """Runs the SuperLink for as long as the server runs (a ServerService companion)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.process = superlink_process(settings)

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()


def write_app(settings: ServerSettings) -> Path:
    app_dir = settings.data_dir / "flower-app"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(APP_PYPROJECT)
    write_connection_config(settings)
    return app_dir


def write_connection_config(settings: ServerSettings) -> Path:
    """The flwr CLI's ``$FLWR_HOME/config.toml``: one connection to our SuperLink (TLS when it has it)."""
    home = flwr_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    if settings.superlink_tls:
        security = f"root-certificates = {json.dumps(str(Path(str(settings.superlink_ca_file)).resolve()))}\n"
    else:
        security = "insecure = true\n"
    path = home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{settings.superlink_host}:{settings.superlink_port}"\n{security}'
    )
    return path


def _flwr(settings: ServerSettings, *args: str, timeout: float | None = None) -> str:
    proc = subprocess.run(
        [executable("flwr"), *args],
        env=flower_env(flwr_home(settings)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise FlowerRunError(f"flwr {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _json_tail(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise FlowerRunError(f"flwr printed no JSON: {text.strip()[-500:]}")
    data: dict[str, Any] = json.loads(text[start:])
    return data


@dataclass(frozen=True)
class RunOutcome:
    flower_run_id: str
    status: str
    details: str
    seconds: float

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def run_config_text(config_path: Path, run_id: str, rounds: int, min_agents: int, strategy: str) -> str:
    """The ``--run-config`` the ServerApp reads back (server_app.main): TOML-ish ``key=value`` pairs."""
    if not is_strategy(strategy):
        raise FlowerRunError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGY_NAMES)}")
    return (
        f"num-rounds={rounds} min-agents={min_agents} strategy='{strategy}' "
        f"server-config='{config_path.resolve()}' training-run-id='{run_id}'"
    )


def submit_run(
    settings: ServerSettings,
    config_path: Path,
    run_id: str,
    rounds: int,
    min_agents: int,
    strategy: str = DEFAULT_STRATEGY,
) -> str:
    app_dir = write_app(settings)
    run_config = run_config_text(config_path, run_id, rounds, min_agents, strategy)
    out = _json_tail(_flwr(settings, "run", str(app_dir), CONNECTION, "--run-config", run_config, "--format", "json"))
    if not out.get("success"):
        raise FlowerRunError(
            f"could not submit the run (is `fedforge server` running?): {out.get('error-message', out)}"
        )
    return str(out["run-id"])


def run_status(settings: ServerSettings, flower_run_id: str) -> tuple[str, str]:
    out = _json_tail(_flwr(settings, "ls", CONNECTION, "--run-id", flower_run_id, "--format", "json"))
    runs = out.get("runs") or []
    if not out.get("success") or not runs:
        raise FlowerRunError(f"cannot read the status of run {flower_run_id}: {out}")
    return str(runs[0].get("status", "")), str(runs[0].get("status-details", ""))


def wait_run(settings: ServerSettings, flower_run_id: str, timeout: float) -> RunOutcome:
    """Stream the run's log until it ends, then read its final status."""
    started = time.monotonic()
    env = flower_env(flwr_home(settings))
    cmd = [executable("flwr"), "log", flower_run_id, CONNECTION, "--stream"]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.info("[run %s] %s", flower_run_id, line.rstrip())
                if time.monotonic() - started > timeout:
                    raise FlowerRunError(f"run {flower_run_id} did not finish in {timeout:.0f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
    status, details = run_status(settings, flower_run_id)
    while not status.startswith("finished") and time.monotonic() - started < timeout:
        time.sleep(2.0)
        status, details = run_status(settings, flower_run_id)
    return RunOutcome(flower_run_id, status, details, time.monotonic() - started)
