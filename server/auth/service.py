"""``AuthService``: users, API tokens, sessions and login over an ``AuthStore``; no HTTP here.

Every event an operator may need to reconstruct later (logins, failed logins, users and
tokens created, disabled, revoked) goes to the audit sink (the registry's audit log).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from server.auth.errors import AuthError, ForbiddenError, UnauthenticatedError, UnknownIdentityError
from server.auth.passwords import PasswordHasher
from server.auth.records import AuthStore, SessionRecord, TokenRecord, UserRecord, check_username, is_username
from server.auth.roles import Principal, Role
from server.auth.throttle import LoginThrottle

TOKEN_PREFIX = "fft_"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A token's last_used is recorded at most this often.
TOUCH_EVERY_S = 60.0


class AuditSink(Protocol):
    def audit(self, actor: str, action: str, detail: dict[str, Any], *, at: float | None = None) -> None: ...


def digest(secret: str) -> str:
    """SHA-256 hex of a token or session id: what the store keeps instead of the secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class NewSession:
    """A login's result: ``session_id`` goes into the cookie and exists nowhere else."""

    session_id: str
    record: SessionRecord
    user: UserRecord


@dataclass(frozen=True)
class NewToken:
    """``token`` is shown once; only its digest is stored."""

    token: str
    record: TokenRecord


class AuthService:
    def __init__(
        self,
        store: AuthStore,
        *,
        audit: AuditSink | None = None,
        hasher: PasswordHasher | None = None,
        session_ttl_s: float = 12 * 3600.0,
        throttle: LoginThrottle | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._audit = audit
        self.hasher = hasher or PasswordHasher()
        self.session_ttl_s = session_ttl_s
        self.throttle = throttle or LoginThrottle()
        self._clock = clock

    def audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        if self._audit is not None:
            self._audit.audit(actor, action, detail, at=self._clock())

    def _find_user(self, username: str) -> UserRecord | None:
        """Only a well-formed name is looked up: every user was created through
        ``check_username``, and a name no user can have (a NUL, which PostgreSQL text cannot
        hold) would otherwise make the store fail instead of answering "no such user"."""
        return self.store.get_user(username) if is_username(username) else None

    # -- users --------------------------------------------------------------------
    def create_user(self, username: str, role: Role, password: str | None, *, actor: str = "cli") -> UserRecord:
        check_username(username)
        password_hash = None if password is None else self.hasher.hash(password)
        user = UserRecord(username=username, role=role, password_hash=password_hash, created=self._clock())
        self.store.add_user(user)
        self.audit(actor, "user.created", {"username": username, "role": role.value})
        return user

    def set_password(self, username: str, password: str, *, actor: str = "cli") -> None:
        self.store.update_user(username, password_hash=self.hasher.hash(password))
        self.store.delete_user_sessions(username)
        self.audit(actor, "user.password_set", {"username": username})

    def set_role(self, username: str, role: Role, *, actor: str = "cli") -> UserRecord:
        user = self.store.update_user(username, role=role)
        self.audit(actor, "user.role_set", {"username": username, "role": role.value})
        return user

    def set_disabled(self, username: str, disabled: bool, *, actor: str = "cli") -> UserRecord:
        """A disabled user's sessions end now and its tokens stop working (they are checked per request)."""
        user = self.store.update_user(username, disabled=disabled)
        if disabled:
            self.store.delete_user_sessions(username)
        self.audit(actor, "user.disabled" if disabled else "user.enabled", {"username": username})
        return user

    # -- API tokens ---------------------------------------------------------------
    def create_token(self, username: str, name: str = "", *, actor: str = "cli") -> NewToken:
        user = self._find_user(username)
        if user is None:
            raise UnknownIdentityError(f"no user {username!r}")
        if "\x00" in name:
            raise AuthError("a token name cannot contain a NUL character")
        token = new_api_token()
        record = TokenRecord(
            token_id=f"tok-{secrets.token_hex(6)}",
            username=username,
            name=name[:128],
            token_hash=digest(token),
            created=self._clock(),
        )
        self.store.add_token(record)
        self.audit(actor, "token.created", {"token_id": record.token_id, "username": username, "name": record.name})
        return NewToken(token, record)

    def revoke_token(self, token_id: str, *, actor: str = "cli") -> TokenRecord:
        record = self.store.revoke_token(token_id, self._clock())
        self.audit(actor, "token.revoked", {"token_id": token_id, "username": record.username})
        return record

    # -- login and sessions -------------------------------------------------------
    def login(self, username: str, password: str, *, client: str = "unknown") -> NewSession:
        """Constant work whether or not the user exists; throttled per user name and per client."""
        keys = (f"user:{username.lower()}", f"client:{client}")
        self.throttle.check(keys)
        user = self._find_user(username)
        if user is None or user.disabled or user.password_hash is None:
            self.hasher.dummy_verify(password)
            ok = False
        else:
            ok = self.hasher.verify(password, user.password_hash)
        if not ok or user is None:
            self.throttle.failed(keys)
            self.audit("anonymous", "auth.login_failed", {"username": username[:128], "client": client})
            raise UnauthenticatedError("wrong user name or password")
        self.throttle.succeeded(keys)
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        record = SessionRecord(
            session_hash=digest(session_id),
            username=user.username,
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            expires=now + self.session_ttl_s,
        )
        self.store.purge_sessions(now)
        self.store.add_session(record)
        self.audit(user.username, "auth.login", {"client": client})
        return NewSession(session_id, record, user)

    def logout(self, session_id: str) -> None:
        session = self.store.get_session(digest(session_id))
        self.store.delete_session(digest(session_id))
        if session is not None:
            self.audit(session.username, "auth.logout", {})

    # -- resolving credentials ----------------------------------------------------
    def _active_user(self, username: str) -> UserRecord:
        user = self.store.get_user(username)
        if user is None or user.disabled:
            raise UnauthenticatedError("credential of a disabled or deleted user")
        return user

    def principal_from_token(self, token: str) -> Principal:
        if not token.startswith(TOKEN_PREFIX):
            raise UnauthenticatedError("not a fedforge API token")
        record = self.store.find_token(digest(token))
        if record is None or record.revoked_at is not None:
            raise UnauthenticatedError("unknown or revoked API token")
        user = self._active_user(record.username)
        now = self._clock()
        if record.last_used is None or now - record.last_used > TOUCH_EVERY_S:
            self.store.touch_token(record.token_id, now)  # not a write per request: a scraper polls often
        return Principal(user.username, user.role, "token", token_id=record.token_id)

    def principal_from_session(self, session_id: str) -> Principal:
        record = self.store.get_session(digest(session_id))
        if record is None or record.expires <= self._clock():
            raise UnauthenticatedError("no session, or it expired: log in again")
        user = self._active_user(record.username)
        return Principal(user.username, user.role, "session", csrf_token=record.csrf_token)


def authorize(principal: Principal, needed: Role, method: str, csrf_header: str | None) -> Principal:
    """The whole authorization rule: role rank, then CSRF for cookie-authenticated mutations.

    Bearer tokens need no CSRF token: a browser never attaches them by itself.
    """
    if principal.via == "session" and method.upper() not in SAFE_METHODS:
        expected = principal.csrf_token or ""
        if not csrf_header or not hmac.compare_digest(csrf_header.encode(), expected.encode()):
            raise ForbiddenError("missing or wrong X-CSRF-Token header")
    if not principal.role.allows(needed):
        raise ForbiddenError(f"needs role {needed.value}; {principal.username} is {principal.role.value}")
    return principal
