"""Checks of request values that no route may pass on to a store.

PostgreSQL text cannot hold a NUL character: a path or query value carrying one (``%00``)
reached the database as a query parameter and came back as a driver error, an HTTP 500.
No stored name can contain NUL, so such a path names nothing (404) and such a query value
is invalid (422, in FastAPI's own error shape); the check runs before every route, so a
route added later is covered without remembering to.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from server.api.errors import ApiNotFoundError

NUL = "\x00"
# Ids stored in 32-bit INTEGER columns (audit entries, versions): a larger value is a 422,
# never a database overflow.
MAX_DB_INT = 2**31 - 1


async def refuse_nul(request: Request) -> None:
    """An app-wide dependency: NUL in the path is a 404, in a query name or value a 422."""
    if NUL in request.scope.get("path", ""):
        raise ApiNotFoundError("no resource has a NUL character in its name")
    for name, value in request.query_params.multi_items():
        if NUL in name or NUL in value:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("query", name.replace(NUL, "\ufffd")),
                        "msg": "Value error, must not contain a NUL character",
                        "input": value.replace(NUL, "\ufffd"),
                    }
                ]
            )
