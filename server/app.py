"""``create_app(settings)``: the fleet server as a FastAPI application.

Contract: every response with status >= 400 has the body ``{"error": {"type", "message", "detail"}}``,
produced here and only here (plus :mod:`server.middleware`, which answers before the app for oversized
or non-JSON bodies): typed :class:`~server.errors.ServerError`\\ s keep their status; request validation
errors are 422 ``validation_error`` with ``detail.field`` naming the field (``scores[1].n_correct``),
malformed JSON is 400 ``malformed_json``; anything unexpected is a 500 ``internal`` whose body says
nothing about the cause (it is logged with the stack trace on the server).

The app refuses to start on a database that is not at the migrations' head revision (run
``arte-server init``), unless ``check_migrations`` is off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException

from arte.wire import API_PREFIX, PROTOCOL_VERSION
from server import db, telemetry
from server.errors import RateLimited, ServerError, to_body
from server.middleware import BodyGuard
from server.models import utcnow
from server.routes import ROUTERS
from server.security import RateLimiter
from server.settings import ServerSettings

__all__ = ["create_app", "field_path"]

logger = logging.getLogger(__name__)

_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "rate_limited",
}


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic error location as a dotted path: ``("body", "scores", 1, "n_correct")`` ->
    ``scores[1].n_correct``; path/query/header parameters keep their name."""
    parts = list(loc)
    if parts and parts[0] in ("body", "path", "query", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or str(loc[0] if loc else "body")


def _error(
    status: int,
    type_: str,
    message: str,
    detail: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(to_body(type_, message, detail), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServerError)
    async def _server_error(_: Request, exc: ServerError) -> JSONResponse:
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, int(exc.detail.get("retry_after_s", 1) + 0.999)))}
        if exc.status == 416 and "size" in exc.detail:
            headers = {"Content-Range": f"bytes */{exc.detail['size']}"}
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return _error(exc.status, exc.type, exc.message, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            e = next(e for e in errors if e.get("type") == "json_invalid")
            reason = (e.get("ctx") or {}).get("error", "invalid JSON")
            return _error(
                400,
                "malformed_json",
                f"request body is not valid JSON: {reason}",
                {"field": "body", "position": e["loc"][-1] if len(e["loc"]) > 1 else None},
            )
        items = [
            {"field": field_path(e.get("loc", ())), "problem": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors
        ]
        first = items[0] if items else {"field": "body", "problem": "invalid"}
        more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
        return _error(
            422,
            "validation_error",
            f"{first['field']}: {first['problem']}{more}",
            {"field": first["field"], "errors": items[:20]},
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, dict) else {}
        message = detail.pop("message", None) if detail else None
        return _error(
            exc.status_code,
            _HTTP_TYPES.get(exc.status_code, "http_error"),
            message or (exc.detail if isinstance(exc.detail, str) else "HTTP error"),
            detail,
            dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal", "internal server error (logged on the server)", {})


def create_app(
    settings: ServerSettings | None = None,
    *,
    engine: Engine | None = None,
    clock: Callable[[], datetime] = utcnow,
    rate_clock: Callable[[], float] | None = None,
) -> FastAPI:
    """The fleet server. ``engine`` defaults to one made from the settings; ``clock`` (UTC now) and
    ``rate_clock`` (monotonic seconds) are injectable for tests."""
    settings = settings or ServerSettings()
    engine = engine or db.make_engine(settings.resolved_database_url(), schema=settings.db_schema)
    if settings.check_migrations:
        db.check_current(engine)
    app = FastAPI(
        title="ARTE Edge fleet server",
        version=f"protocol-{PROTOCOL_VERSION}",
        description="Devices enroll, pull drafts, push per-draft scores and metrics, pull datasets; "
        "admins manage tasks, cohorts, tokens, rounds and jobs. Errors: "
        '{"error": {"type", "message", "detail"}}.',
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = db.make_sessionmaker(engine)
    app.state.clock = clock
    app.state.db_revision = db.current_revision(engine)
    limiter_args: dict[str, Any] = {"clock": rate_clock} if rate_clock else {}
    app.state.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst, **limiter_args)
    _install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(
        BodyGuard, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )
    telemetry.install(app)  # last: its request metrics middleware is the outermost layer
    return app
