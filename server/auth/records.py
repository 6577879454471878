"""What the auth store keeps, as frozen dataclasses, and the ``AuthStore`` interface.

Secrets are never stored: passwords as scrypt hashes, API tokens and session ids as
SHA-256 digests (they are 256-bit random strings, so a fast hash cannot be brute-forced).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from server.auth.errors import AuthError
from server.auth.roles import Role

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")


def is_username(name: str) -> bool:
    return _USERNAME.match(name) is not None


def check_username(name: str) -> str:
    if not is_username(name):
        raise AuthError(f"invalid user name {name!r}: 1-64 of [A-Za-z0-9_.@-], starting with a letter or digit")
    return name


@dataclass(frozen=True)
class UserRecord:
    username: str
    role: Role
    password_hash: str | None  # None: a token-only user (e.g. a CI robot) cannot log in
    created: float
    disabled: bool = False


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    username: str
    name: str
    token_hash: str
    created: float
    revoked_at: float | None = None
    last_used: float | None = None


@dataclass(frozen=True)
class SessionRecord:
    session_hash: str
    username: str
    csrf_token: str
    created: float
    expires: float


class AuthStore(Protocol):
    """Users, API tokens and sessions; implementations: in memory and SQL (server.registry)."""

    # -- users --------------------------------------------------------------------
    def add_user(self, user: UserRecord) -> None:
        """Raises ``AuthError`` when the name is taken."""
        ...

    def get_user(self, username: str) -> UserRecord | None: ...

    def list_users(self) -> list[UserRecord]:
        """Sorted by name."""
        ...

    def update_user(
        self,
        username: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password_hash: str | None = None,
    ) -> UserRecord:
        """Raises ``AuthError`` for an unknown user; ``None`` leaves a field as it is."""
        ...

    # -- API tokens ---------------------------------------------------------------
    def add_token(self, token: TokenRecord) -> None: ...

    def get_token(self, token_id: str) -> TokenRecord | None: ...

    def find_token(self, token_hash: str) -> TokenRecord | None: ...

    def list_tokens(self, username: str | None = None) -> list[TokenRecord]:
        """Oldest first."""
        ...

    def revoke_token(self, token_id: str, at: float) -> TokenRecord:
        """Idempotent (the first revocation time stays); raises ``AuthError`` for an unknown id."""
        ...

    def touch_token(self, token_id: str, at: float) -> None:
        """Record a use (best effort: shown to admins to spot stale tokens)."""
        ...

    # -- sessions -----------------------------------------------------------------
    def add_session(self, session: SessionRecord) -> None: ...

    def get_session(self, session_hash: str) -> SessionRecord | None: ...

    def delete_session(self, session_hash: str) -> None: ...

    def delete_user_sessions(self, username: str) -> int: ...

    def purge_sessions(self, now: float) -> int:
        """Drop expired sessions; returns how many."""
        ...
