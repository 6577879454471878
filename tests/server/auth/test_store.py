"""The AuthStore contract against every implementation (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.auth import AuthError, AuthStore, InMemoryAuthStore, Role, SessionRecord, TokenRecord, UserRecord
from server.auth.errors import UnknownIdentityError


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
def store(request: pytest.FixtureRequest) -> Iterator[AuthStore]:
    if request.param == "memory":
        yield InMemoryAuthStore()
        return
    from server.registry.auth_sql import SqlAuthStore
    from server.registry.migrate import migrate

    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "clean_postgres")
    migrate(url)
    sql = SqlAuthStore(url)
    yield sql
    sql.close()


def _user(name: str = "ann", role: Role = Role.OPERATOR) -> UserRecord:
    return UserRecord(username=name, role=role, password_hash="scrypt$x", created=1.0)


def test_users(store: AuthStore) -> None:
    store.add_user(_user("bob", Role.VIEWER))
    store.add_user(_user("ann"))
    with pytest.raises(AuthError, match="exists"):
        store.add_user(_user("ann"))
    assert [u.username for u in store.list_users()] == ["ann", "bob"]
    assert store.get_user("ann") == _user("ann")
    assert store.get_user("nobody") is None
    updated = store.update_user("bob", role=Role.ADMIN, disabled=True)
    assert (updated.role, updated.disabled, updated.password_hash) == (Role.ADMIN, True, "scrypt$x")
    assert store.get_user("bob") == updated
    with pytest.raises(UnknownIdentityError):
        store.update_user("nobody", disabled=True)


def test_tokens(store: AuthStore) -> None:
    store.add_user(_user())
    token = TokenRecord(token_id="tok-1", username="ann", name="ci", token_hash="h" * 64, created=5.0)
    store.add_token(token)
    store.add_token(TokenRecord(token_id="tok-0", username="ann", name="", token_hash="g" * 64, created=4.0))
    assert store.find_token("h" * 64) == token
    assert store.find_token("x" * 64) is None
    assert [t.token_id for t in store.list_tokens()] == ["tok-0", "tok-1"]
    assert store.list_tokens("someone-else") == []
    store.touch_token("tok-1", 7.0)
    assert store.revoke_token("tok-1", 9.0).revoked_at == 9.0
    assert store.revoke_token("tok-1", 10.0).revoked_at == 9.0  # the first revocation stays
    got = store.get_token("tok-1")
    assert got is not None
    assert got.last_used == 7.0
    with pytest.raises(UnknownIdentityError):
        store.revoke_token("tok-9", 1.0)


def test_sessions(store: AuthStore) -> None:
    store.add_user(_user())
    store.add_user(_user("bob"))
    for h, user, expires in (("a" * 64, "ann", 10.0), ("b" * 64, "ann", 100.0), ("c" * 64, "bob", 100.0)):
        store.add_session(SessionRecord(session_hash=h, username=user, csrf_token="t", created=1.0, expires=expires))
    assert store.purge_sessions(50.0) == 1
    assert store.get_session("a" * 64) is None
    got = store.get_session("b" * 64)
    assert got is not None
    assert got.username == "ann"
    assert got.expires == 100.0
    assert store.delete_user_sessions("ann") == 1
    store.delete_session("c" * 64)
    store.delete_session("c" * 64)  # idempotent
    assert store.get_session("c" * 64) is None
