"""The operator dashboard's HTML pages: server-rendered shells that the static JS fills in.

The shells carry who is signed in, their role and their session's CSRF token. Action
controls (start a run, promote, roll back, revoke) are rendered only for operators and
admins, so a viewer's page holds no control it could not use; the API enforces the same
rule on every mutating request. A page requested without a valid session redirects to the
login page. Static files are served by one route over a fixed list of names (no directory
walking, and every route stays visible to the authorization matrix test).
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from server.api.errors import ApiNotFoundError
from server.api.security import SESSION_COOKIE, authenticate
from server.auth.errors import AuthError
from server.auth.roles import Principal, Role
from server.config import ServerSettings
from server.federation.catalog import DEFAULT_STRATEGY, STRATEGY_NAMES
from server.web import STATIC_DIR, TEMPLATES_DIR

# (path, page id, title) in navigation order.
NAV: tuple[tuple[str, str, str], ...] = (
    ("/fleet", "fleet", "Fleet"),
    ("/models", "models", "Models"),
    ("/runs", "runs", "Training runs"),
    ("/rollouts", "rollouts", "Rollouts"),
    ("/audit", "audit", "Audit log"),
)
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
NO_STORE = {"Cache-Control": "no-store"}


def static_assets() -> dict[str, str]:
    """File name -> media type, for the files shipped in ``server/web/static``."""
    return {
        p.name: STATIC_TYPES.get(p.suffix) or mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        for p in STATIC_DIR.iterdir()
        if p.is_file() and not p.name.startswith(".")
    }


async def page_principal(request: Request) -> Principal | None:
    """The session behind a page request, or None (pages redirect instead of answering 401)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        return await authenticate(request, None, cookie)
    except AuthError:
        return None


def install_pages(app: FastAPI, settings: ServerSettings) -> None:
    templates = Jinja2Templates(directory=TEMPLATES_DIR)
    assets = static_assets()

    def render(request: Request, template: str, page: str, principal: Principal, **extra: Any) -> Response:
        context = {
            "page": page,
            "nav": NAV,
            "user": principal.username,
            "role": principal.role.value,
            "can_act": principal.role.allows(Role.OPERATOR),
            "csrf_token": principal.csrf_token or "",
            "fleet": settings.fleet,
            "task": settings.task,
            **extra,
        }
        return templates.TemplateResponse(request, template, context, headers=NO_STORE)

    async def page(request: Request, template: str, page_id: str, **extra: Any) -> Response:
        principal = await page_principal(request)
        if principal is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return render(request, template, page_id, principal, **extra)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {"fleet": settings.fleet}, headers=NO_STORE)

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/fleet", status_code=303)

    @app.get("/fleet", response_class=HTMLResponse, include_in_schema=False)
    async def fleet_page(request: Request) -> Response:
        return await page(request, "fleet.html", "fleet")

    @app.get("/devices/{device_id}", response_class=HTMLResponse, include_in_schema=False)
    async def device_page(request: Request, device_id: str) -> Response:
        return await page(request, "device.html", "fleet", device_id=device_id)

    @app.get("/models", response_class=HTMLResponse, include_in_schema=False)
    async def models_page(request: Request) -> Response:
        return await page(request, "models.html", "models")

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    async def runs_page(request: Request) -> Response:
        return await page(request, "runs.html", "runs", strategies=STRATEGY_NAMES, default_strategy=DEFAULT_STRATEGY)

    @app.get("/rollouts", response_class=HTMLResponse, include_in_schema=False)
    async def rollouts_page(request: Request) -> Response:
        return await page(request, "rollouts.html", "rollouts")

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    async def audit_page(request: Request) -> Response:
        return await page(request, "audit.html", "audit")

    @app.get("/static/{asset}", include_in_schema=False)
    async def static(asset: str) -> Response:
        media_type = assets.get(asset)
        if media_type is None:
            raise ApiNotFoundError(f"no static file {asset!r}")
        return FileResponse(STATIC_DIR / asset, media_type=media_type, headers={"Cache-Control": "no-cache"})
