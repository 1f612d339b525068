"""``GET /api/v1/health``: liveness and schema revision (no key needed; says nothing about the fleet)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from arte.wire import API_PREFIX, PROTOCOL_VERSION

router = APIRouter(prefix=API_PREFIX, tags=["health"])


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    """The server is up; its protocol version and database revision."""
    return {
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "db_revision": request.app.state.db_revision,
    }
