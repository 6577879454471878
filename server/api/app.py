"""The FastAPI application factory; routes only translate between HTTP and the registry.

Every ``/api`` route needs a principal (docs/api.md): reads need viewer, actions operator,
user and token management admin. Only ``/healthz``, ``POST /api/auth/login``, the OpenAPI
schema and docs, and, unless ``metrics_require_auth``, ``/metrics`` are open. tests/server/test_api_authz.py enumerates
``app.routes`` so a new route cannot escape that rule unnoticed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.actions.fleet import FleetActions
from server.api.action_routes import install_action_errors, install_action_routes
from server.api.auth_routes import install_auth_routes
from server.api.dashboard import install_dashboard_routes
from server.api.errors import ApiNotFoundError
from server.api.metrics import ApiMetrics
from server.api.pages import install_pages
from server.api.params import refuse_nul
from server.api.security import install_auth_errors, require_viewer
from server.api.views import VersionPath, device_view, fleet_device, model_view, round_view, run_view
from server.auth.memory import InMemoryAuthStore
from server.auth.records import AuthStore
from server.auth.service import AuthService
from server.auth.throttle import LoginThrottle
from server.config import ServerSettings
from server.registry.records import Registry
from server.registry.telemetry import InMemoryTelemetryStore, TelemetryStore

ONNX_MEDIA_TYPE = "application/octet-stream"


__all__ = ["ApiNotFoundError", "auth_service_for", "create_app", "default_auth"]


def default_auth(settings: ServerSettings, registry: Registry) -> AuthService:
    """An auth service over an in-memory store (tests, demos); the server passes the SQL one."""
    return auth_service_for(settings, InMemoryAuthStore(), registry)


def auth_service_for(settings: ServerSettings, store: AuthStore, registry: Registry) -> AuthService:
    return AuthService(
        store,
        audit=registry,
        session_ttl_s=settings.session_ttl_s,
        throttle=LoginThrottle(settings.login_max_failures, settings.login_window_s),
    )


def create_app(
    settings: ServerSettings,
    registry: Registry,
    auth: AuthService | None = None,
    actions: FleetActions | None = None,
    telemetry: TelemetryStore | None = None,
) -> FastAPI:
    """``actions`` defaults to one without a broker link or launcher: actions then answer 503.

    ``telemetry`` (the dashboard's device history) defaults to an in-memory store.
    """
    # refuse_nul runs before every route's own dependencies (auth included): see server.api.params.
    app = FastAPI(title="fedforge server", version="1", dependencies=[Depends(refuse_nul)])
    telemetry = telemetry if telemetry is not None else InMemoryTelemetryStore()
    app.state.telemetry = telemetry
    metrics = ApiMetrics(registry, settings.fleet, settings.task, settings.online_window_s)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.auth = auth or default_auth(settings, registry)
    install_auth_errors(app)
    install_action_errors(app)
    actions = actions or FleetActions(settings, registry, channel=None, signing_key=None)
    app.state.actions = actions

    @app.exception_handler(ApiNotFoundError)
    async def _not_found(_request: Request, exc: ApiNotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "not_found", "detail": exc.what})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": "http_error", "detail": exc.detail})

    @app.middleware("http")
    async def _timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        # The route template, not the raw path: unknown ids must not explode label cardinality.
        path = getattr(route, "path", "unmatched")
        metrics.latency.labels(request.method, path, str(response.status_code)).observe(time.perf_counter() - start)
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "fleet": settings.fleet, "task": settings.task}

    metrics_deps = [Depends(require_viewer)] if settings.metrics_require_auth else []

    @app.get("/metrics", dependencies=metrics_deps)
    async def prometheus_metrics() -> Response:
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    install_auth_routes(app, settings)
    # The dashboard's routes first: /api/models/compare must win over /api/models/{version}.
    install_dashboard_routes(app, settings, registry, telemetry)
    install_read_routes(app, settings, registry)
    install_action_routes(app, settings, registry, actions)
    install_pages(app, settings)
    return app


def install_read_routes(app: FastAPI, settings: ServerSettings, registry: Registry) -> None:
    """Every route here needs at least a viewer.

    Routes are registered on the app itself, not through ``include_router``: FastAPI 0.138
    keeps included routers as opaque entries in ``app.routes``, which would hide them from
    the authorization matrix test and from the latency histogram's route label.
    """
    viewer = [Depends(require_viewer)]
    task = settings.task

    # Registry calls are blocking I/O: run them off the event loop.
    @app.get("/api/models", dependencies=viewer)
    async def list_models() -> list[dict[str, Any]]:
        versions = await run_in_threadpool(registry.list_model_versions, task)
        return [model_view(m) for m in versions]

    @app.get("/api/models/{version}", dependencies=viewer)
    async def get_model(version: VersionPath) -> dict[str, Any]:
        record = await run_in_threadpool(registry.get_model_version, task, version)
        if record is None:
            raise ApiNotFoundError(f"model version {version} of task {task!r} not found")
        return model_view(record)

    @app.get("/api/models/{version}/manifest", dependencies=viewer)
    async def get_manifest(version: VersionPath) -> dict[str, Any]:
        record = await run_in_threadpool(registry.get_model_version, task, version)
        if record is None:
            raise ApiNotFoundError(f"model version {version} of task {task!r} not found")
        return record.manifest

    @app.get("/api/models/{version}/artifact", dependencies=viewer)
    async def get_artifact(version: VersionPath) -> Response:
        record = await run_in_threadpool(registry.get_model_version, task, version)
        data = None if record is None else await run_in_threadpool(registry.get_artifact, task, version)
        if record is None or data is None:
            raise ApiNotFoundError(f"artifact of model version {version} of task {task!r} not found")
        return Response(
            content=data,
            media_type=ONNX_MEDIA_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{task}-v{version}.onnx"',
                "ETag": f'"{record.sha256}"',
                "X-Fedforge-Sha256": record.sha256,
            },
        )

    @app.get("/api/devices", dependencies=viewer)
    async def list_devices() -> list[dict[str, Any]]:
        devices = await run_in_threadpool(registry.list_devices, settings.fleet)
        now = time.time()
        return [device_view(d, now, settings.online_window_s) for d in devices]

    @app.get("/api/devices/{device_id}", dependencies=viewer)
    async def get_device(device_id: str) -> dict[str, Any]:
        device = await run_in_threadpool(fleet_device, registry, settings.fleet, device_id)
        return device_view(device, time.time(), settings.online_window_s)

    @app.get("/api/runs", dependencies=viewer)
    async def list_runs() -> list[dict[str, Any]]:
        return [run_view(r) for r in await run_in_threadpool(registry.list_runs)]

    @app.get("/api/runs/{run_id}", dependencies=viewer)
    async def get_run(run_id: str) -> dict[str, Any]:
        run = await run_in_threadpool(registry.get_run, run_id)
        if run is None:
            raise ApiNotFoundError(f"training run {run_id!r} not found")
        rounds = await run_in_threadpool(registry.list_rounds, run_id)
        return {**run_view(run), "round_metrics": [round_view(r) for r in rounds]}

    @app.get("/api/rounds", dependencies=viewer)
    async def list_rounds(run_id: str | None = None) -> list[dict[str, Any]]:
        if run_id is not None and await run_in_threadpool(registry.get_run, run_id) is None:
            raise ApiNotFoundError(f"training run {run_id!r} not found")
        return [round_view(r) for r in await run_in_threadpool(registry.list_rounds, run_id)]
