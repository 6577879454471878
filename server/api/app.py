"""The FastAPI application factory; routes only translate between HTTP and the registry."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api.dashboard import dashboard_router
from server.api.errors import ApiNotFoundError
from server.api.metrics import ApiMetrics
from server.api.pages import pages_router, static_files
from server.api.views import device_view, model_view, round_view, run_view
from server.config import ServerSettings
from server.registry.records import Registry
from server.registry.telemetry import InMemoryTelemetryStore, TelemetryStore

ONNX_MEDIA_TYPE = "application/octet-stream"


def create_app(settings: ServerSettings, registry: Registry, telemetry: TelemetryStore | None = None) -> FastAPI:
    app = FastAPI(title="fedforge server", version="1")
    telemetry = telemetry if telemetry is not None else InMemoryTelemetryStore()
    app.state.telemetry = telemetry
    metrics = ApiMetrics(registry, settings.fleet, settings.task, settings.online_window_s)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    task = settings.task

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
        return {"status": "ok", "fleet": settings.fleet, "task": task}

    # The dashboard's routes first: /api/models/compare must win over /api/models/{version}.
    app.include_router(dashboard_router(settings, registry, telemetry))
    app.include_router(pages_router(settings))
    app.mount("/static", static_files(), name="static")

    # Registry calls are blocking I/O: run them off the event loop.
    @app.get("/api/models")
    async def list_models() -> list[dict[str, Any]]:
        versions = await run_in_threadpool(registry.list_model_versions, task)
        return [model_view(m) for m in versions]

    @app.get("/api/models/{version}")
    async def get_model(version: int) -> dict[str, Any]:
        record = await run_in_threadpool(registry.get_model_version, task, version)
        if record is None:
            raise ApiNotFoundError(f"model version {version} of task {task!r} not found")
        return model_view(record)

    @app.get("/api/models/{version}/manifest")
    async def get_manifest(version: int) -> dict[str, Any]:
        record = await run_in_threadpool(registry.get_model_version, task, version)
        if record is None:
            raise ApiNotFoundError(f"model version {version} of task {task!r} not found")
        return record.manifest

    @app.get("/api/models/{version}/artifact")
    async def get_artifact(version: int) -> Response:
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

    @app.get("/api/devices")
    async def list_devices() -> list[dict[str, Any]]:
        devices = await run_in_threadpool(registry.list_devices, settings.fleet)
        now = time.time()
        return [device_view(d, now, settings.online_window_s) for d in devices]

    @app.get("/api/devices/{device_id}")
    async def get_device(device_id: str) -> dict[str, Any]:
        device = await run_in_threadpool(registry.get_device, device_id)
        if device is None or device.fleet != settings.fleet:
            raise ApiNotFoundError(f"device {device_id!r} not found in fleet {settings.fleet!r}")
        return device_view(device, time.time(), settings.online_window_s)

    @app.get("/api/runs")
    async def list_runs() -> list[dict[str, Any]]:
        return [run_view(r) for r in await run_in_threadpool(registry.list_runs)]

    @app.get("/api/runs/{run_id}")
    async def get_run(run_id: str) -> dict[str, Any]:
        run = await run_in_threadpool(registry.get_run, run_id)
        if run is None:
            raise ApiNotFoundError(f"training run {run_id!r} not found")
        rounds = await run_in_threadpool(registry.list_rounds, run_id)
        return {**run_view(run), "round_metrics": [round_view(r) for r in rounds]}

    @app.get("/api/rounds")
    async def list_rounds(run_id: str | None = None) -> list[dict[str, Any]]:
        if run_id is not None and await run_in_threadpool(registry.get_run, run_id) is None:
            raise ApiNotFoundError(f"training run {run_id!r} not found")
        return [round_view(r) for r in await run_in_threadpool(registry.list_rounds, run_id)]

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    return app
