"""Ray and Flower's Simulation Engine, started and always stopped around one twin run.

The Ray adapter of the twin. The driver starts Ray itself (locally, or attached to the
cluster the scenario or the environment names) so it controls what Flower's backend would
otherwise default: the actor count (CPUs per virtual device), one torch thread per actor,
no dashboard, no log forwarding. Flower's ``run_simulation`` then finds Ray initialized and
runs the deployment's ServerApp (in a thread here) and the twin's ClientApp (in the actors).

Reaping: every process Ray starts inherits an environment tag; after ``ray.shutdown`` any
tagged process still alive (raylet, GCS, idle workers) is killed, even when the run failed.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from shared.process import TAG_ENV, become_subreaper, kill_tree
from simulations.twin.errors import TwinError
from simulations.twin.scenario import Scenario

log = logging.getLogger(__name__)

QUIET_LOGGERS = ("flwr", "ray")


@dataclass(frozen=True)
class EngineInfo:
    ray_address: str  # the GCS address of the cluster the run used
    attached: bool  # True when the run joined an existing cluster
    cluster_cpus: float
    actors: int
    cpus_per_device: float
    ray_version: str


def ray_init_args(scenario: Scenario, tag: str) -> dict[str, Any]:
    """Arguments for ``ray.init``: the scenario's (or the environment's) cluster address, passed through."""
    env_vars = {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        TAG_ENV: tag,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "configure_logging": True,
        "runtime_env": {"env_vars": env_vars},
    }
    address = scenario.ray_address()
    if address:
        args["address"] = address
    else:
        # "local", not None: with None, Ray would join any cluster it finds on this machine
        # (a running GCS, /tmp/ray/ray_current_cluster) instead of starting the twin's own.
        args["address"] = "local"
        args["num_cpus"] = os.cpu_count() or 1
    return args


def backend_config(scenario: Scenario, cluster_cpus: float) -> dict[str, Any]:
    cpus = scenario.runtime.cpus_per_device
    if scenario.runtime.actors:
        cpus = max(cluster_cpus / scenario.runtime.actors, 0.01)
    return {"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}}


@contextmanager
def ray_session(scenario: Scenario) -> Iterator[EngineInfo]:
    """Ray up for the block, then down with every process it started."""
    import ray

    tag = f"twin-{uuid.uuid4().hex[:12]}"
    outer = os.environ.get(TAG_ENV)
    nested = f"{outer}:{tag}" if outer else tag
    os.environ[TAG_ENV] = nested  # local Ray processes inherit it
    become_subreaper()
    before = set(_children())
    try:
        args = ray_init_args(scenario, nested)  # workers too keep the enclosing tags
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator env vars
                ctx: Any = ray.init(**args)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError from Ray
            where = args.get("address", "a local Ray")
            raise TwinError(f"cannot start or join Ray at {where}: {exc}") from exc
        cpus = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        cfg = backend_config(scenario, cpus)
        per = float(cfg["client_resources"]["num_cpus"])
        yield EngineInfo(
            ray_address=str(ctx.address_info.get("gcs_address", ctx.address_info.get("address", ""))),
            attached=args["address"] != "local",
            cluster_cpus=cpus,
            actors=int(cpus // per) if per else 0,
            cpus_per_device=per,
            ray_version=ray.__version__,
        )
    finally:
        try:
            if ray.is_initialized():
                ray.shutdown()
        finally:
            if outer is None:
                os.environ.pop(TAG_ENV, None)
            else:
                os.environ[TAG_ENV] = outer
            survivors = kill_tree(sorted(set(_children()) - before), grace=3.0, tag=tag)
            if survivors:
                log.error("Ray processes survived the twin run: %s", sorted(survivors))


def _children() -> list[int]:
    from shared.process import descendants

    return sorted(descendants(os.getpid()))


def run_flower_simulation(
    scenario: Scenario, info: EngineInfo, *, indexed: bool = True, stock_backend: bool = False
) -> None:
    """Flower's Simulation Engine with the deployment's ServerApp and the twin's ClientApp.

    ``indexed=False`` and ``stock_backend=True`` give Flower's defaults (its O(N²) message
    lookup, 2 CPUs per virtual client): the benchmark's anchor.
    """
    from flwr.simulation import run_simulation

    from server.federation.server_app import app as server_app
    from simulations.twin.linkstate_index import indexed_link_state
    from simulations.twin.virtual_client import app as client_app

    config = {} if stock_backend else backend_config(scenario, info.cluster_cpus)
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:  # run_simulation's deprecation notice and per-round INFO lines
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with indexed_link_state() if indexed else nullcontext():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=scenario.devices,
                backend_config=config,
            )
    except SystemExit as exc:  # flwr_exit() ends the process on some failures: keep ours alive
        raise TwinError(f"Flower's Simulation Engine exited with code {exc.code}") from None
    except Exception as exc:  # the ServerApp's or the engine's failure, re-raised by run_simulation
        raise TwinError(f"the simulation failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
