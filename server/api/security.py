"""FastAPI adapter of the auth core: credentials from the request, roles, CSRF, error mapping.

A request proves who it is with ``Authorization: Bearer fft_...`` (scripts, Prometheus) or
the ``fedforge_session`` cookie (the browser). A cookie request that changes something must
also carry ``X-CSRF-Token`` equal to its session's token; a bearer request needs none, since
a browser never attaches a bearer token on its own. A missing or wrong credential is 401, a
weak role or missing CSRF token 403, a throttled login 429; all JSON, never a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from server.auth.errors import AuthError, ForbiddenError, ThrottledError, UnauthenticatedError, UnknownIdentityError
from server.auth.roles import Principal, Role
from server.auth.service import AuthService, authorize

SESSION_COOKIE = "fedforge_session"
CSRF_HEADER = "X-CSRF-Token"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token (`fft_...`) from `fedforge tokens create`; no CSRF header needed.",
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description=f"The session cookie set by POST /api/auth/login; mutations also need the {CSRF_HEADER} header.",
)

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Principal",
    "Role",
    "auth_service",
    "install_auth_errors",
    "require_admin",
    "require_operator",
    "require_role",
    "require_viewer",
]


def auth_service(request: Request) -> AuthService:
    service: AuthService = request.app.state.auth
    return service


async def authenticate(request: Request, bearer: str | None, cookie: str | None) -> Principal:
    """A bearer token wins over a cookie; a wrong bearer token never falls back to the cookie."""
    service = auth_service(request)
    if bearer is not None:
        return await run_in_threadpool(service.principal_from_token, bearer)
    if cookie:
        return await run_in_threadpool(service.principal_from_session, cookie)
    raise UnauthenticatedError("authentication required: a bearer API token or a session cookie")


def require_role(needed: Role) -> Callable[..., Awaitable[Principal]]:
    async def dependency(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),  # noqa: B008
        cookie: str | None = Depends(cookie_scheme),
    ) -> Principal:
        principal = await authenticate(request, None if bearer is None else bearer.credentials, cookie)
        return authorize(principal, needed, request.method, request.headers.get(CSRF_HEADER))

    dependency.__name__ = f"require_{needed.value}"
    return dependency


require_viewer = require_role(Role.VIEWER)
require_operator = require_role(Role.OPERATOR)
require_admin = require_role(Role.ADMIN)


def install_auth_errors(app: FastAPI) -> None:
    @app.exception_handler(UnauthenticatedError)
    async def _unauthenticated(_request: Request, exc: UnauthenticatedError) -> JSONResponse:
        return JSONResponse(
            status_code=401,
            content={"error": "unauthenticated", "detail": str(exc)},
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(ForbiddenError)
    async def _forbidden(_request: Request, exc: ForbiddenError) -> JSONResponse:
        return JSONResponse(status_code=403, content={"error": "forbidden", "detail": str(exc)})

    @app.exception_handler(ThrottledError)
    async def _throttled(_request: Request, exc: ThrottledError) -> JSONResponse:
        return JSONResponse(
            status_code=429,
            content={"error": "throttled", "detail": str(exc)},
            headers={"Retry-After": str(int(exc.retry_after_s))},
        )

    @app.exception_handler(UnknownIdentityError)
    async def _unknown(_request: Request, exc: UnknownIdentityError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "not_found", "detail": str(exc)})

    @app.exception_handler(AuthError)
    async def _auth_error(_request: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": "bad_request", "detail": str(exc)})
