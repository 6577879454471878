"""The auth core without HTTP: hashing, roles, tokens, sessions, throttling, authorization."""

from __future__ import annotations

import pytest

from server.auth import (
    AuthError,
    AuthService,
    ForbiddenError,
    InMemoryAuthStore,
    LoginThrottle,
    PasswordHasher,
    Principal,
    Role,
    ThrottledError,
    UnauthenticatedError,
    authorize,
)
from server.auth.service import digest
from server.registry import InMemoryRegistry
from tests.server.auth_support import FAST_HASHER


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _service(clock: Clock | None = None, **kw: object) -> tuple[AuthService, InMemoryRegistry]:
    registry = InMemoryRegistry()
    service = AuthService(InMemoryAuthStore(), audit=registry, hasher=FAST_HASHER, clock=clock or Clock(), **kw)  # type: ignore[arg-type]
    return service, registry


def test_password_hash_is_salted_self_describing_and_verifies() -> None:
    first, second = FAST_HASHER.hash("s3cret-pass"), FAST_HASHER.hash("s3cret-pass")
    assert first != second  # per-user salt
    assert first.startswith("scrypt$1024$8$1$")
    assert "s3cret-pass" not in first
    assert FAST_HASHER.verify("s3cret-pass", first)
    assert not FAST_HASHER.verify("s3cret-pasS", first)
    # A hash made with other parameters is verified with its own parameters.
    assert PasswordHasher(n=2**11).verify("s3cret-pass", first)


@pytest.mark.parametrize(
    "stored", ["", "md5$x", "scrypt$a$b$c$d$e", "scrypt$1024$8$1$!!$!!", "scrypt$1000$8$1$AA==$AA=="]
)
def test_unreadable_hash_never_verifies_and_never_raises(stored: str) -> None:
    assert not FAST_HASHER.verify("whatever-pass", stored)


def test_short_password_is_refused() -> None:
    with pytest.raises(AuthError, match="too short"):
        FAST_HASHER.hash("short")


def test_role_order() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR)
    assert not Role.OPERATOR.allows(Role.ADMIN)
    with pytest.raises(AuthError, match="unknown role"):
        Role.parse("root")


def test_token_is_shown_once_stored_hashed_and_revocable() -> None:
    service, registry = _service()
    service.create_user("ci", Role.OPERATOR, None)
    new = service.create_token("ci", "deploy bot")
    assert new.token.startswith("fft_")
    assert len(new.token) > 40
    stored = service.store.get_token(new.record.token_id)
    assert stored is not None
    assert stored.token_hash == digest(new.token)
    assert new.token not in repr(stored)
    principal = service.principal_from_token(new.token)
    assert principal == Principal("ci", Role.OPERATOR, "token", token_id=new.record.token_id)
    service.revoke_token(new.record.token_id, actor="admin")
    with pytest.raises(UnauthenticatedError):
        service.principal_from_token(new.token)
    actions = [e.action for e in reversed(registry.list_audit())]
    assert actions == ["user.created", "token.created", "token.revoked"]
    assert registry.list_audit()[0].actor == "admin"


@pytest.mark.parametrize("token", ["", "fft_", "fft_nope", "ghp_abc", "fft_" + "A" * 43])
def test_unknown_tokens_are_unauthenticated(token: str) -> None:
    service, _ = _service()
    with pytest.raises(UnauthenticatedError):
        service.principal_from_token(token)


def test_login_session_expiry_and_logout() -> None:
    clock = Clock()
    service, registry = _service(clock, session_ttl_s=60.0)
    service.create_user("ann", Role.VIEWER, "pass-word-1")
    session = service.login("ann", "pass-word-1", client="10.0.0.1")
    assert service.store.get_session(session.session_id) is None  # stored by digest only
    principal = service.principal_from_session(session.session_id)
    assert principal.via == "session"
    assert principal.csrf_token == session.record.csrf_token
    clock.now += 61
    with pytest.raises(UnauthenticatedError, match="expired"):
        service.principal_from_session(session.session_id)
    again = service.login("ann", "pass-word-1")
    service.logout(again.session_id)
    with pytest.raises(UnauthenticatedError):
        service.principal_from_session(again.session_id)
    assert [e.action for e in registry.list_audit()][:3] == ["auth.logout", "auth.login", "auth.login"]


def test_wrong_password_and_unknown_user_fail_alike_and_are_audited() -> None:
    service, registry = _service()
    service.create_user("ann", Role.VIEWER, "pass-word-1")
    with pytest.raises(UnauthenticatedError) as wrong:
        service.login("ann", "nope-nope-nope", client="c")
    with pytest.raises(UnauthenticatedError) as unknown:
        service.login("bob", "nope-nope-nope", client="c")
    assert str(wrong.value) == str(unknown.value)
    failed = [e for e in registry.list_audit() if e.action == "auth.login_failed"]
    assert [e.detail["username"] for e in failed] == ["bob", "ann"]


def test_disabled_user_loses_sessions_tokens_and_login() -> None:
    service, _ = _service()
    service.create_user("ann", Role.ADMIN, "pass-word-1")
    session = service.login("ann", "pass-word-1")
    token = service.create_token("ann").token
    service.set_disabled("ann", True)
    for attempt in (
        lambda: service.principal_from_session(session.session_id),
        lambda: service.principal_from_token(token),
        lambda: service.login("ann", "pass-word-1"),
    ):
        with pytest.raises(UnauthenticatedError):
            attempt()
    service.set_disabled("ann", False)
    assert service.principal_from_token(token).role is Role.ADMIN


def test_token_only_user_cannot_log_in() -> None:
    service, _ = _service()
    service.create_user("robot", Role.OPERATOR, None)
    with pytest.raises(UnauthenticatedError):
        service.login("robot", "")


def test_throttle_per_user_then_window_expires() -> None:
    mono = Clock(0.0)
    throttle = LoginThrottle(max_failures=3, window_s=60.0, clock=mono)
    service, _ = _service(throttle=throttle)
    service.create_user("ann", Role.VIEWER, "pass-word-1")
    for _ in range(3):
        with pytest.raises(UnauthenticatedError):
            service.login("ann", "wrong-wrong", client=f"c{_}")
    with pytest.raises(ThrottledError) as throttled:
        service.login("ann", "pass-word-1", client="elsewhere")  # even the right password waits
    assert throttled.value.retry_after_s > 0
    mono.now += 61
    assert service.login("ann", "pass-word-1").user.username == "ann"


def test_duplicate_and_invalid_user_names() -> None:
    service, _ = _service()
    service.create_user("ann", Role.VIEWER, None)
    with pytest.raises(AuthError, match="exists"):
        service.create_user("ann", Role.ADMIN, None)
    with pytest.raises(AuthError, match="invalid user name"):
        service.create_user("../etc", Role.ADMIN, None)


def _principal(role: Role, via: str, csrf: str | None = "tok") -> Principal:
    return Principal("u", role, via, csrf_token=csrf)  # type: ignore[arg-type]


def test_authorize_roles_and_csrf() -> None:
    viewer_session = _principal(Role.VIEWER, "session")
    assert authorize(viewer_session, Role.VIEWER, "GET", None) is viewer_session
    with pytest.raises(ForbiddenError, match="needs role operator"):
        authorize(_principal(Role.VIEWER, "token"), Role.OPERATOR, "POST", None)
    operator_session = _principal(Role.OPERATOR, "session")
    for header in (None, "", "wrong"):
        with pytest.raises(ForbiddenError, match="CSRF"):
            authorize(operator_session, Role.OPERATOR, "POST", header)
    assert authorize(operator_session, Role.OPERATOR, "DELETE", "tok") is operator_session
    assert authorize(_principal(Role.ADMIN, "token", None), Role.OPERATOR, "POST", None).role is Role.ADMIN
