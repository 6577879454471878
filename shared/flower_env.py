"""How fedforge starts Flower's executables: from this environment, quiet and offline.

Both the server (SuperLink, flwr CLI) and the agent (SuperNode) start Flower daemons, and
the daemons look up ``flower-superexec`` on PATH, so both sides need the same environment.
No flwr import here: this is configuration, the Flower adapters live in each package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


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
