"""``GET /metrics``: the Prometheus exposition (see :mod:`server.telemetry` for what it holds).

Who may read it: the admin key, or the scrape token ``ARTE_SERVER_METRICS_TOKEN`` when one is set,
both as ``Authorization: Bearer <key>``. The token exists so a Prometheus scraper does not need the
admin key (which can do everything); it opens ``/metrics`` and nothing else. Anything else gets 401
(403 for a device key) with the one error body. The path is ``/metrics``, outside ``/api/v1``, where
Prometheus looks by default; ``/api/v1/metrics`` is the devices' before/after accuracy resource. It is
not in the OpenAPI schema, which documents the JSON API under ``/api/v1`` only; the answer is the
Prometheus text format (OpenMetrics when the ``Accept`` header asks for it).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server import deps
from server.db import transaction

__all__ = ["router", "PATH"]

PATH = "/metrics"
router = APIRouter(tags=["telemetry"])
_bearer = HTTPBearer(
    auto_error=False, description="The admin key (arte_ak_...) or ARTE_SERVER_METRICS_TOKEN."
)
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _authorize(request: Request, creds: HTTPAuthorizationCredentials | None) -> None:
    token = request.app.state.settings.metrics_token
    if creds is not None and creds.scheme.lower() == "bearer" and token is not None:
        if hmac.compare_digest(creds.credentials.encode(), token.get_secret_value().encode()):
            deps.check_rate(request, "metrics-token")
            return
    with transaction(request.app.state.sessions) as s:
        deps.require_admin(request, creds, s, request.app.state.clock())


@router.get(PATH, response_class=Response, include_in_schema=False)
def metrics(request: Request, creds: Creds) -> Response:
    """Counters and latency histograms of the server process(es) and fleet state gauges."""
    _authorize(request, creds)
    body, content_type = request.app.state.telemetry.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
