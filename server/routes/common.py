"""Path parameter types shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from server.models import ID_PATTERN

__all__ = ["IdPath", "IdQuery", "ERRORS"]

IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An id such as rnd_<32 hex>.")]
IdQuery = Annotated[str | None, Query(pattern=ID_PATTERN)]

# Documented error statuses (every one has the body {"error": {"type", "message", "detail"}}).
ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing, unknown or revoked key."},
    403: {"description": "The key may not use this endpoint."},
    404: {"description": "No such resource for this caller."},
    413: {"description": "Request body too large."},
    415: {"description": "Request body is not application/json."},
    422: {"description": "A field is invalid (detail.field names it)."},
    429: {"description": "Rate limit exceeded."},
}
