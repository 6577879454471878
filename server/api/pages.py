"""The operator dashboard's HTML pages: server-rendered shells that the static JS fills in.

The shells carry who is signed in and their role. Action controls (start a run, promote,
roll back, revoke) are rendered only for operators and admins, so a viewer's page holds no
control it could not use; the API enforces the same rule on every mutating request.
A page requested without a valid session redirects to the login page.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api.security import Principal, require_viewer
from server.config import ServerSettings
from server.web import STATIC_DIR, TEMPLATES_DIR

ACTION_ROLES = frozenset({"operator", "admin"})

# (path, page id, title) in navigation order.
NAV: tuple[tuple[str, str, str], ...] = (
    ("/fleet", "fleet", "Fleet"),
    ("/models", "models", "Models"),
    ("/runs", "runs", "Training runs"),
    ("/rollouts", "rollouts", "Rollouts"),
    ("/audit", "audit", "Audit log"),
)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


async def _principal(request: Request) -> Principal | None:
    try:
        return await require_viewer(request)
    except StarletteHTTPException as exc:
        if exc.status_code in (401, 403):
            return None
        raise


def pages_router(settings: ServerSettings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    templates = Jinja2Templates(directory=TEMPLATES_DIR)

    def render(request: Request, template: str, page: str, principal: Principal, **extra: Any) -> Response:
        context = {
            "page": page,
            "nav": NAV,
            "user": principal.username,
            "role": principal.role,
            "can_act": principal.role in ACTION_ROLES,
            "fleet": settings.fleet,
            "task": settings.task,
            **extra,
        }
        return templates.TemplateResponse(request, template, context, headers={"Cache-Control": "no-store"})

    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"fleet": settings.fleet}, headers={"Cache-Control": "no-store"}
        )

    @router.get("/")
    async def root() -> Response:
        return RedirectResponse("/fleet", status_code=303)

    async def page(request: Request, template: str, page_id: str, **extra: Any) -> Response:
        principal = await _principal(request)
        if principal is None:
            return to_login(request)
        return render(request, template, page_id, principal, **extra)

    @router.get("/fleet", response_class=HTMLResponse)
    async def fleet(request: Request) -> Response:
        return await page(request, "fleet.html", "fleet")

    @router.get("/devices/{device_id}", response_class=HTMLResponse)
    async def device(request: Request, device_id: str) -> Response:
        return await page(request, "device.html", "fleet", device_id=device_id)

    @router.get("/models", response_class=HTMLResponse)
    async def models(request: Request) -> Response:
        return await page(request, "models.html", "models")

    @router.get("/runs", response_class=HTMLResponse)
    async def runs(request: Request) -> Response:
        return await page(request, "runs.html", "runs")

    @router.get("/rollouts", response_class=HTMLResponse)
    async def rollouts(request: Request) -> Response:
        return await page(request, "rollouts.html", "rollouts")

    @router.get("/audit", response_class=HTMLResponse)
    async def audit(request: Request) -> Response:
        return await page(request, "audit.html", "audit")

    return router
