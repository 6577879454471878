"""Plain helpers shared by the edge-agent tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from typing import Any

NAMES = ("a", "b", "c", "amount")
BOUNDS = {"a": (-10.0, 10.0), "b": (-10.0, 10.0), "c": (-10.0, 10.0), "amount": (0.0, 10_000.0)}
GOOD = (0.1, -0.2, 0.3, 12.5)


def record(rid: str, values: tuple[float, ...] = GOOD, ts: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"schema_version": 1, "record_id": rid, "ts": ts, "features": dict(zip(NAMES, values, strict=True)), **extra}


def payload(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def closed_port_url() -> str:
    """A loopback broker URL where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return f"mqtt://127.0.0.1:{port}"
