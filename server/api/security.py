"""PLACEHOLDER until branch dash-api's auth core is merged (replaced wholesale then)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request


@dataclass(frozen=True)
class Principal:
    username: str
    role: str
    via: str


async def require_viewer(request: Request) -> Principal:
    role = request.headers.get("X-Test-Role", "admin")
    return Principal("dev", role, "none")
