"""``create_app(settings)``: the fleet server as a FastAPI application.

Contract: every response with status >= 400 has the body ``{"error": {"type", "message", "detail"}}``,
made by :func:`server.responses.exception_response` from the exception handlers installed here (plus
:mod:`server.middleware`, which answers before the app for oversized or non-JSON bodies, and
:mod:`server.device_fast_path`, which answers the device hot path with the same function): typed
:class:`~server.errors.ApiError`\\ s keep their status; request validation errors are 422
``validation_error`` with ``detail.field`` naming the field (``scores[1].n_correct``), malformed JSON is
400 ``malformed_json``; a method the path does not answer is 405 with ``Allow`` listing those it does;
anything unexpected is a 500 ``internal`` whose body says nothing about the cause (it is logged with
the stack trace on the server). :mod:`server.openapi` documents every status each route can answer.

The app refuses to start on a database that is not at the migrations' head revision (run
``arte-server init``), unless ``check_migrations`` is off.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException
from starlette.routing import Match

from arte.wire import API_PREFIX, PROTOCOL_VERSION
from server import db, openapi, responses, telemetry, timings
from server.device_fast_path import DeviceFastPath
from server.groupcommit import ReportWriter
from server.keycache import DeviceKeyCache
from server.middleware import BodyGuard, ConcurrencyLimit
from server.responses import field_path
from server.routes import ROUTERS
from server.schemas import ReportIn
from server.security import RateLimiter
from server.settings import ServerSettings
from server.tables import utcnow

__all__ = ["create_app", "app_from_env", "field_path"]

logger = logging.getLogger(__name__)

# SQLite: the report writer checkpoints the WAL in the background every 0.25 s (server.groupcommit); a
# commit checkpoints by itself only past this many pages (40 MB; SQLite's default is 1000), a safety net.
API_WAL_AUTOCHECKPOINT = 10_000

_API_ROUTES = tuple(route for router in ROUTERS for route in router.routes)


def _install_error_handlers(app: FastAPI) -> None:
    async def answer(request: Request, exc: Exception) -> JSONResponse:
        allow = _allowed_methods(request) if isinstance(exc, HTTPException) and exc.status_code == 405 else None
        return responses.exception_response(exc, request.method, request.url.path, allow=allow)

    for cls in responses.HANDLED:
        app.add_exception_handler(cls, answer)


def _allowed_methods(request: Request) -> list[str]:
    """Every method an API route answers on the request's path: Starlette's own 405 names only the
    methods of the first route that matched the path (``POST`` where ``GET`` is a second route)."""
    methods: set[str] = set()
    for route in _API_ROUTES:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


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
    engine = engine or db.make_engine(
        settings.resolved_database_url(),
        schema=settings.db_schema,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        wal_autocheckpoint=API_WAL_AUTOCHECKPOINT,
    )
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
    app.state.device_keys = DeviceKeyCache(settings.device_key_cache_s)
    app.state.report_writer = ReportWriter(engine, app.state.device_keys)
    _install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(DeviceFastPath, state=app.state)  # innermost: behind the body guard and the cap
    app.add_middleware(
        BodyGuard, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests)
    openapi.document(app, _API_ROUTES, bodies=(ReportIn,))
    telemetry.install(app)  # its request metrics middleware is the outermost layer but for the timings
    if settings.debug_timings:
        app.add_middleware(timings.RequestTimings)
    return app


def app_from_env() -> FastAPI:
    """The app with settings from the ``ARTE_SERVER_*`` environment: the factory each uvicorn worker
    process calls (``arte-server serve --workers N``)."""
    app = create_app(ServerSettings())
    # Each report allocates thousands of short-lived objects (parsed JSON, validated models, rows): with
    # the interpreter's default threshold (700) the cyclic collector ran every few requests and its full
    # passes walked the whole heap, measured 25-30% of the CPU per report. What exists after start-up
    # (modules, the app, SQLAlchemy's and pydantic's schemas) lives as long as the process: keep it out
    # of the collector's walks, and collect young objects every 20,000 allocations instead.
    gc.freeze()
    gc.set_threshold(20_000)
    return app
