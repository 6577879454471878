"""``InMemoryAuthStore``: the auth store for tests and single-process demos (thread-safe)."""

from __future__ import annotations

import dataclasses
import threading

from server.auth.errors import AuthError, UnknownIdentityError
from server.auth.records import SessionRecord, TokenRecord, UserRecord
from server.auth.roles import Role


class InMemoryAuthStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, UserRecord] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._sessions: dict[str, SessionRecord] = {}

    def add_user(self, user: UserRecord) -> None:
        with self._lock:
            if user.username in self._users:
                raise AuthError(f"user {user.username!r} already exists")
            self._users[user.username] = user

    def get_user(self, username: str) -> UserRecord | None:
        with self._lock:
            return self._users.get(username)

    def list_users(self) -> list[UserRecord]:
        with self._lock:
            return sorted(self._users.values(), key=lambda u: u.username)

    def update_user(
        self,
        username: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password_hash: str | None = None,
    ) -> UserRecord:
        with self._lock:
            user = self._users.get(username)
            if user is None:
                raise UnknownIdentityError(f"no user {username!r}")
            changes: dict[str, object] = {}
            if role is not None:
                changes["role"] = role
            if disabled is not None:
                changes["disabled"] = disabled
            if password_hash is not None:
                changes["password_hash"] = password_hash
            user = dataclasses.replace(user, **changes)  # type: ignore[arg-type]
            self._users[username] = user
            return user

    def add_token(self, token: TokenRecord) -> None:
        with self._lock:
            if token.token_id in self._tokens:
                raise AuthError(f"token {token.token_id!r} already exists")
            self._tokens[token.token_id] = token

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._lock:
            return self._tokens.get(token_id)

    def find_token(self, token_hash: str) -> TokenRecord | None:
        with self._lock:
            return next((t for t in self._tokens.values() if t.token_hash == token_hash), None)

    def list_tokens(self, username: str | None = None) -> list[TokenRecord]:
        with self._lock:
            tokens = [t for t in self._tokens.values() if username is None or t.username == username]
        return sorted(tokens, key=lambda t: (t.created, t.token_id))

    def revoke_token(self, token_id: str, at: float) -> TokenRecord:
        with self._lock:
            token = self._tokens.get(token_id)
            if token is None:
                raise UnknownIdentityError(f"no token {token_id!r}")
            if token.revoked_at is None:
                token = dataclasses.replace(token, revoked_at=at)
                self._tokens[token_id] = token
            return token

    def touch_token(self, token_id: str, at: float) -> None:
        with self._lock:
            token = self._tokens.get(token_id)
            if token is not None:
                self._tokens[token_id] = dataclasses.replace(token, last_used=at)

    def add_session(self, session: SessionRecord) -> None:
        with self._lock:
            self._sessions[session.session_hash] = session

    def get_session(self, session_hash: str) -> SessionRecord | None:
        with self._lock:
            return self._sessions.get(session_hash)

    def delete_session(self, session_hash: str) -> None:
        with self._lock:
            self._sessions.pop(session_hash, None)

    def delete_user_sessions(self, username: str) -> int:
        with self._lock:
            doomed = [h for h, s in self._sessions.items() if s.username == username]
            for h in doomed:
                del self._sessions[h]
            return len(doomed)

    def purge_sessions(self, now: float) -> int:
        with self._lock:
            doomed = [h for h, s in self._sessions.items() if s.expires <= now]
            for h in doomed:
                del self._sessions[h]
            return len(doomed)
