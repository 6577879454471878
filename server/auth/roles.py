"""Roles and the principal a request acts as: the vocabulary of every authorization check.

Roles are ordered (viewer < operator < admin): a route names the least role it needs and
every stronger role passes, so there is one comparison and no per-route role lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from server.auth.errors import AuthError


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """True when this role is at least ``needed``."""
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(r.value for r in cls)
            raise AuthError(f"unknown role {value!r}: use one of {names}") from None


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

Via = Literal["session", "token"]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as, and how it proved it (a session needs CSRF on mutations)."""

    username: str
    role: Role
    via: Via
    csrf_token: str | None = None
    token_id: str | None = None
