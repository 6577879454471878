"""``SqlAuthStore``: users, API tokens and sessions in the registry database (SQLAlchemy 2).

It shares the registry's schema and Alembic history (revision ``0002_auth``); pass the
``SqlRegistry``'s engine to share its connection pool.
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from server.auth.errors import AuthError, UnknownIdentityError
from server.auth.records import SessionRecord, TokenRecord, UserRecord
from server.auth.roles import Role
from server.registry.models import ApiToken, AuthSession, User
from server.registry.sql import make_engine


def _user(row: User) -> UserRecord:
    return UserRecord(
        username=row.username,
        role=Role(row.role),
        password_hash=row.password_hash,
        created=row.created,
        disabled=row.disabled,
    )


def _token(row: ApiToken) -> TokenRecord:
    return TokenRecord(
        token_id=row.token_id,
        username=row.username,
        name=row.name,
        token_hash=row.token_hash,
        created=row.created,
        revoked_at=row.revoked_at,
        last_used=row.last_used,
    )


def _session_record(row: AuthSession) -> SessionRecord:
    return SessionRecord(
        session_hash=row.session_hash,
        username=row.username,
        csrf_token=row.csrf_token,
        created=row.created,
        expires=row.expires,
    )


class SqlAuthStore:
    def __init__(self, engine: Engine | str) -> None:
        self._owns_engine = isinstance(engine, str)
        self.engine = make_engine(engine) if isinstance(engine, str) else engine
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _session(self) -> Session:
        return self._sessions()

    # -- users --------------------------------------------------------------------
    def add_user(self, user: UserRecord) -> None:
        row = User(
            username=user.username,
            role=user.role.value,
            password_hash=user.password_hash,
            created=user.created,
            disabled=user.disabled,
        )
        try:
            with self._session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise AuthError(f"user {user.username!r} already exists") from None

    def get_user(self, username: str) -> UserRecord | None:
        with self._session() as s:
            row = s.get(User, username)
            return None if row is None else _user(row)

    def list_users(self) -> list[UserRecord]:
        with self._session() as s:
            return [_user(r) for r in s.scalars(select(User).order_by(User.username))]

    def update_user(
        self,
        username: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password_hash: str | None = None,
    ) -> UserRecord:
        with self._session() as s, s.begin():
            row = s.get(User, username)
            if row is None:
                raise UnknownIdentityError(f"no user {username!r}")
            if role is not None:
                row.role = role.value
            if disabled is not None:
                row.disabled = disabled
            if password_hash is not None:
                row.password_hash = password_hash
            return _user(row)

    # -- API tokens ---------------------------------------------------------------
    def add_token(self, token: TokenRecord) -> None:
        row = ApiToken(
            token_id=token.token_id,
            username=token.username,
            name=token.name,
            token_hash=token.token_hash,
            created=token.created,
            revoked_at=token.revoked_at,
            last_used=token.last_used,
        )
        try:
            with self._session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise AuthError(f"token {token.token_id!r} conflicts with an existing one") from None

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._session() as s:
            row = s.get(ApiToken, token_id)
            return None if row is None else _token(row)

    def find_token(self, token_hash: str) -> TokenRecord | None:
        with self._session() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))
            return None if row is None else _token(row)

    def list_tokens(self, username: str | None = None) -> list[TokenRecord]:
        query = select(ApiToken).order_by(ApiToken.created, ApiToken.token_id)
        if username is not None:
            query = query.where(ApiToken.username == username)
        with self._session() as s:
            return [_token(r) for r in s.scalars(query)]

    def revoke_token(self, token_id: str, at: float) -> TokenRecord:
        with self._session() as s, s.begin():
            row = s.get(ApiToken, token_id)
            if row is None:
                raise UnknownIdentityError(f"no token {token_id!r}")
            if row.revoked_at is None:
                row.revoked_at = at
            return _token(row)

    def touch_token(self, token_id: str, at: float) -> None:
        with self._session() as s, s.begin():
            s.execute(update(ApiToken).where(ApiToken.token_id == token_id).values(last_used=at))

    # -- sessions -----------------------------------------------------------------
    def add_session(self, session: SessionRecord) -> None:
        with self._session() as s, s.begin():
            s.add(
                AuthSession(
                    session_hash=session.session_hash,
                    username=session.username,
                    csrf_token=session.csrf_token,
                    created=session.created,
                    expires=session.expires,
                )
            )

    def get_session(self, session_hash: str) -> SessionRecord | None:
        with self._session() as s:
            row = s.get(AuthSession, session_hash)
            return None if row is None else _session_record(row)

    def delete_session(self, session_hash: str) -> None:
        with self._session() as s, s.begin():
            s.execute(delete(AuthSession).where(AuthSession.session_hash == session_hash))

    def delete_user_sessions(self, username: str) -> int:
        with self._session() as s, s.begin():
            result = s.execute(delete(AuthSession).where(AuthSession.username == username))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def purge_sessions(self, now: float) -> int:
        with self._session() as s, s.begin():
            result = s.execute(delete(AuthSession).where(AuthSession.expires <= now))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()
