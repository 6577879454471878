"""How fedforge starts Flower's executables: from this environment, quiet and offline.

Both the server (SuperLink, flwr CLI) and the agent (SuperNode) start Flower daemons, and
the daemons look up ``flower-superexec`` on PATH, so both sides need the same environment.
No flwr import here: this is configuration, the Flower adapters live in each package.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

# The flwr release whose internals fedforge reaches into (the ClientApp worker, the
# SuperNode's adaptive poll, the ServerApp's reply pulls); pyproject.toml pins it exactly.
PINNED_FLWR = "1.42.0"


def flwr_is_pinned(version: str | None = None) -> bool:
    """Whether the installed flwr (or ``version``) is the one those patches were written for."""
    return (version or importlib.metadata.version("flwr")) == PINNED_FLWR


def venv_executable(name: str) -> str:
    """The executable installed beside this Python, else the bare name (PATH lookup)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flower_env(flwr_home: Path) -> dict[str, str]:
    """No telemetry, no update check, no ``uv sync`` of app dependencies, fast task polling."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": env.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"),
        }
    )
    return env


# The edge node's processes (SuperNode, ClientApp worker) run with one compute thread.
# Measured on the worker (2 cores, torch 2.13.0 CPU, fraud MLP, 2026-11-29): a 256-row
# local epoch takes ~5 ms instead of ~90 ms (OpenMP's spinning threads fight the agent, the
# SuperNode and the other agents for two cores) and the worker runs 3 threads instead of 6;
# the tiny model has nothing to gain from more. Resident memory is the same either way, and
# so it is with MALLOC_ARENA_MAX=2 or a malloc_trim(0) after each message (worker 304 MB,
# SuperNode 147 MB with and without): the worker's memory is torch's import (~180 MB) plus
# flwr's runtime client (~100 MB), not freed heap, so neither is set.
LEAN_NODE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def lean_node_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus the edge node's thread settings; a value already set in ``env`` wins."""
    return {**LEAN_NODE_ENV, **env}
