"""Users of every role with API tokens, for API tests; cheap scrypt so logins stay fast."""

from __future__ import annotations

from dataclasses import dataclass

from server.auth import AuthService, InMemoryAuthStore, PasswordHasher, Role
from server.registry.records import Registry

# 2**10 instead of 2**14: the same code path at a test-friendly cost.
FAST_HASHER = PasswordHasher(n=2**10)
PASSWORD = "correct horse battery"
ROLES = ("viewer", "operator", "admin")


@dataclass
class Identities:
    auth: AuthService
    tokens: dict[str, str]  # role name -> bearer token of a user with that role

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def identities(registry: Registry | None = None, store: object | None = None) -> Identities:
    """One user per role (named after it, password ``PASSWORD``), each with one API token."""
    auth = AuthService(store or InMemoryAuthStore(), audit=registry, hasher=FAST_HASHER)  # type: ignore[arg-type]
    tokens = {}
    for role in ROLES:
        auth.create_user(role, Role(role), PASSWORD, actor="test")
        tokens[role] = auth.create_token(role, f"{role} token", actor="test").token
    return Identities(auth, tokens)
