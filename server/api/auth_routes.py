"""Login, logout, who-am-I, and the admin's user and API-token management over HTTP."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from server.api.security import SESSION_COOKIE, auth_service, require_admin, require_viewer
from server.auth.records import TokenRecord, UserRecord
from server.auth.roles import Principal, Role
from server.auth.service import digest
from server.config import ServerSettings


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class NewUserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    role: Role
    password: str | None = Field(default=None, min_length=8, max_length=1024)


class NewTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    name: str = Field(default="", max_length=128)


def user_view(u: UserRecord) -> dict[str, Any]:
    return {
        "username": u.username,
        "role": u.role.value,
        "created": u.created,
        "disabled": u.disabled,
        "can_log_in": u.password_hash is not None,
    }


def token_view(t: TokenRecord) -> dict[str, Any]:
    return {
        "token_id": t.token_id,
        "username": t.username,
        "name": t.name,
        "created": t.created,
        "revoked_at": t.revoked_at,
        "last_used": t.last_used,
    }


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def install_auth_routes(app: FastAPI, settings: ServerSettings) -> None:

    @app.post("/api/auth/login")
    async def login(body: LoginRequest, request: Request, response: Response) -> dict[str, Any]:
        """Open to anyone; wrong user and wrong password are the same 401, throttled per user and client."""
        service = auth_service(request)
        session = await run_in_threadpool(service.login, body.username, body.password, client=_client(request))
        previous = request.cookies.get(SESSION_COOKIE)
        if previous:  # a new login replaces the browser's old session instead of leaving it alive
            await run_in_threadpool(service.store.delete_session, digest(previous))
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            max_age=int(service.session_ttl_s),
            httponly=True,
            samesite="strict",
            secure=settings.cookie_secure,
            path="/",
        )
        user, csrf = session.user, session.record.csrf_token
        return {"username": user.username, "role": user.role.value, "csrf_token": csrf}

    @app.post("/api/auth/logout")
    async def logout(
        request: Request,
        response: Response,
        principal: Principal = Depends(require_viewer),  # noqa: B008
    ) -> dict[str, Any]:
        """Ends the cookie's session (CSRF-checked like every cookie mutation); a no-op for a token."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if principal.via == "session" and cookie:
            await run_in_threadpool(auth_service(request).logout, cookie)
        response.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=settings.cookie_secure
        )
        return {"username": principal.username, "logged_out": principal.via == "session"}

    @app.get("/api/auth/me")
    async def me(principal: Principal = Depends(require_viewer)) -> dict[str, Any]:  # noqa: B008
        return {
            "username": principal.username,
            "role": principal.role.value,
            "via": principal.via,
            "csrf_token": principal.csrf_token,
        }

    @app.get("/api/users")
    async def list_users(request: Request, _: Principal = Depends(require_admin)) -> list[dict[str, Any]]:  # noqa: B008
        return [user_view(u) for u in await run_in_threadpool(auth_service(request).store.list_users)]

    @app.post("/api/users", status_code=201)
    async def create_user(
        body: NewUserRequest,
        request: Request,
        principal: Principal = Depends(require_admin),  # noqa: B008
    ) -> dict[str, Any]:
        service = auth_service(request)

        def _create() -> UserRecord:
            return service.create_user(body.username, body.role, body.password, actor=principal.username)

        return user_view(await run_in_threadpool(_create))

    @app.post("/api/users/{username}/disable")
    async def disable_user(
        username: str,
        request: Request,
        principal: Principal = Depends(require_admin),  # noqa: B008
    ) -> dict[str, Any]:
        service = auth_service(request)

        def _disable() -> UserRecord:
            return service.set_disabled(username, True, actor=principal.username)

        return user_view(await run_in_threadpool(_disable))

    @app.get("/api/tokens")
    async def list_tokens(request: Request, _: Principal = Depends(require_admin)) -> list[dict[str, Any]]:  # noqa: B008
        return [token_view(t) for t in await run_in_threadpool(auth_service(request).store.list_tokens)]

    @app.post("/api/tokens", status_code=201)
    async def create_token(
        body: NewTokenRequest,
        request: Request,
        principal: Principal = Depends(require_admin),  # noqa: B008
    ) -> dict[str, Any]:
        """The token is in this response and nowhere else: only its digest is stored."""
        service = auth_service(request)
        new = await run_in_threadpool(lambda: service.create_token(body.username, body.name, actor=principal.username))
        return {**token_view(new.record), "token": new.token}

    @app.post("/api/tokens/{token_id}/revoke")
    async def revoke_token(
        token_id: str,
        request: Request,
        principal: Principal = Depends(require_admin),  # noqa: B008
    ) -> dict[str, Any]:
        service = auth_service(request)
        record = await run_in_threadpool(lambda: service.revoke_token(token_id, actor=principal.username))
        return token_view(record)
