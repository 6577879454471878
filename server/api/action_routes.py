"""Operator actions over HTTP (operator or admin; each audited with the principal), audit and rollouts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from server.actions.fleet import ActionConflictError, ActionUnavailableError, FleetActions
from server.api.params import MAX_DB_INT
from server.api.rollouts import applied_config, device_config_view, rollouts_view
from server.api.security import require_operator, require_viewer
from server.api.views import MAX_VERSION, VersionPath, audit_view, fleet_device
from server.auth.roles import Principal
from server.config import ServerSettings
from server.errors import NotFoundError
from server.federation.catalog import DEFAULT_STRATEGY, STRATEGY_NAMES
from server.registry.records import Registry
from shared.commands import REMOTE_SETTINGS

# A device page lists this many of the device's configs; the one in effect may be older, and
# is looked for among up to CONFIG_SEARCH (a bounded read: one config a minute for a week).
CONFIG_HISTORY = 20
CONFIG_SEARCH = 10_000


class StartRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(ge=1, le=1000)
    strategy: str = Field(default=DEFAULT_STRATEGY, description=f"one of: {', '.join(STRATEGY_NAMES)}")
    min_agents: int = Field(default=1, ge=1, le=100_000)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)


class ConfigRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # JSON scalars only; the agent checks each value against its own settings.
    settings: dict[str, StrictBool | StrictInt | Annotated[float, Field(allow_inf_nan=False)] | StrictStr | None] = (
        Field(max_length=len(REMOTE_SETTINGS), description=f"any of: {', '.join(sorted(REMOTE_SETTINGS))}")
    )


def install_action_errors(app: FastAPI) -> None:
    @app.exception_handler(ActionConflictError)
    async def _conflict(_request: Request, exc: ActionConflictError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"error": "conflict", "detail": str(exc)})

    @app.exception_handler(ActionUnavailableError)
    async def _unavailable(_request: Request, exc: ActionUnavailableError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": "unavailable", "detail": str(exc)})

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "not_found", "detail": str(exc)})


def install_action_routes(app: FastAPI, settings: ServerSettings, registry: Registry, actions: FleetActions) -> None:
    operator = Depends(require_operator)
    viewer = [Depends(require_viewer)]

    @app.post("/api/runs", status_code=202)
    async def start_run(body: StartRunRequest, principal: Principal = operator) -> dict[str, Any]:
        """Submit a federated training run; follow it at GET /api/runs/{run_id}."""
        return await run_in_threadpool(
            actions.start_run, body.rounds, body.strategy, body.min_agents, principal.username
        )

    @app.post("/api/models/{version}/promote")
    async def promote(version: VersionPath, principal: Principal = operator) -> dict[str, Any]:
        return await run_in_threadpool(actions.promote, version, principal.username)

    @app.post("/api/fleet/rollback")
    async def rollback(body: RollbackRequest, principal: Principal = operator) -> dict[str, Any]:
        """Roll the fleet back to an earlier released version (a signed command the agents verify)."""
        return await run_in_threadpool(actions.rollback, body.version, principal.username)

    @app.post("/api/devices/{device_id}/revoke")
    async def revoke_device(device_id: str, principal: Principal = operator) -> dict[str, Any]:
        return await run_in_threadpool(actions.revoke_device, device_id, principal.username)

    @app.post("/api/devices/{device_id}/pin")
    async def pin_device(device_id: str, body: PinRequest, principal: Principal = operator) -> dict[str, Any]:
        """Hold one device at a released version (a signed command only that device accepts)."""
        return await run_in_threadpool(actions.pin_device, device_id, body.version, principal.username)

    @app.post("/api/devices/{device_id}/config")
    async def configure_device(device_id: str, body: ConfigRequest, principal: Principal = operator) -> dict[str, Any]:
        """Set the device's remote settings (all of them; ``{}`` returns it to its local ones)."""
        return await run_in_threadpool(actions.configure_device, device_id, body.settings, principal.username)

    @app.get("/api/devices/{device_id}/config", dependencies=viewer)
    async def device_config(device_id: str) -> dict[str, Any]:
        """The remote settings in effect on the device, and the last configs sent with its answers."""

        def _read() -> dict[str, Any]:
            fleet_device(registry, settings.fleet, device_id)
            configs = registry.list_commands(settings.fleet, CONFIG_HISTORY, kind="config", device_id=device_id)
            acks = registry.list_acks(command_ids=[c.command_id for c in configs])
            if len(configs) == CONFIG_HISTORY and applied_config(device_id, configs, acks) is None:
                # The one in effect, if any, is older than the page shows: look further back.
                configs = registry.list_commands(settings.fleet, CONFIG_SEARCH, kind="config", device_id=device_id)
                acks = registry.list_acks(command_ids=[c.command_id for c in configs])
            return device_config_view(device_id, configs, acks, history=CONFIG_HISTORY)

        return await run_in_threadpool(_read)

    @app.post("/api/devices/{device_id}/unpin")
    async def unpin_device(device_id: str, principal: Principal = operator) -> dict[str, Any]:
        """Let a pinned device follow the fleet's release again."""
        return await run_in_threadpool(actions.unpin_device, device_id, principal.username)

    @app.get("/api/audit")
    async def list_audit(
        _: Principal = operator,
        limit: int = Query(default=100, ge=1, le=1000),
        before: int | None = Query(default=None, ge=1, le=MAX_DB_INT, description="an entry id: page to older entries"),
    ) -> dict[str, Any]:
        """Newest first; pass the last page's ``next_before`` as ``before`` for the next page."""
        entries = await run_in_threadpool(registry.list_audit, limit, before)
        next_before = entries[-1].id if len(entries) == limit else None
        return {"entries": [audit_view(e) for e in entries], "next_before": next_before}

    @app.get("/api/rollouts", dependencies=viewer)
    async def rollouts() -> dict[str, Any]:
        def _read() -> dict[str, Any]:
            commands = registry.list_commands(settings.fleet)  # the newest 100
            return rollouts_view(
                registry.list_devices(settings.fleet),
                registry.list_model_versions(settings.task),
                commands,
                registry.list_acks(command_ids=[c.command_id for c in commands]),
                settings.online_window_s,
            )

        return await run_in_threadpool(_read)
