"""What each error becomes on the wire, in one place: :func:`exception_response` maps any exception to
its response with the one error body shape ``{"error": {"type", "message", "detail"}}`` and its headers.

The app's exception handlers (:mod:`server.app`, installed for :data:`HANDLED`) and the device fast path
(:mod:`server.device_fast_path`, which answers before FastAPI's handlers could) both call it, so an error reads
the same whichever path answered it: typed :class:`~server.errors.ApiError`\\ s keep their status (401
with ``WWW-Authenticate``, 429 and 503 with ``Retry-After``, 416 with ``Content-Range``); request
validation errors are 422 ``validation_error`` with ``detail.field`` naming the field, malformed JSON 400
``malformed_json``; Starlette's HTTP errors keep their status (405 with ``Allow``); a database that
cannot be reached 503 ``database_unavailable``; anything unexpected 500 ``internal`` with a body that
says nothing about the cause (it is logged with its stack trace).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException

from server.errors import ApiError, DatabaseUnavailable, RateLimited, to_body

__all__ = [
    "HANDLED",
    "api_error_response",
    "error_response",
    "exception_response",
    "field_path",
]

logger = logging.getLogger("server.app")  # the name these lines have always been logged under

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


def error_response(
    status: int,
    type_: str,
    message: str,
    detail: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(to_body(type_, message, detail), status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, int(exc.detail.get("retry_after_s", 1) + 0.999)))}
    if exc.status == 416 and "size" in exc.detail:
        headers = {"Content-Range": f"bytes */{exc.detail['size']}"}
    if exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, DatabaseUnavailable):
        headers = {"Retry-After": "1"}
    return error_response(exc.status, exc.type, exc.message, exc.detail, headers)


def database_down_response(method: str, path: str, exc: sa_exc.DBAPIError) -> JSONResponse:
    # the transaction was rolled back (server.db.transaction), so a retry cannot store anything twice
    logger.warning("database unavailable on %s %s: %s", method, path, str(exc.orig)[:300])
    return api_error_response(
        DatabaseUnavailable("the database is unavailable; nothing was stored, retry in a moment")
    )


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (e.get("ctx") or {}).get("error", "invalid JSON")
        return error_response(
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
    return error_response(
        422,
        "validation_error",
        f"{first['field']}: {first['problem']}{more}",
        {"field": first["field"], "errors": items[:20]},
    )


def http_error_response(exc: HTTPException, allow: list[str] | None = None) -> JSONResponse:
    detail = dict(exc.detail) if isinstance(exc.detail, dict) else {}
    message = detail.pop("message", None)
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405 and allow:  # every method of the path, not only the first route's
        headers["Allow"] = ", ".join(allow)
    return error_response(
        exc.status_code,
        _HTTP_TYPES.get(exc.status_code, "http_error"),
        message or (exc.detail if isinstance(exc.detail, str) else "HTTP error"),
        detail,
        headers or None,
    )


def unexpected_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    logger.error("unhandled error on %s %s", method, path, exc_info=exc)
    return error_response(500, "internal", "internal server error (logged on the server)", {})


_DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError)

# The exception classes the app installs :func:`exception_response` for (Starlette picks a handler by
# the exception's class; ``Exception`` alone would answer only after the app, re-raising the error).
HANDLED: tuple[type[BaseException], ...] = (
    ApiError,
    RequestValidationError,
    HTTPException,
    *_DATABASE_DOWN,
    Exception,
)


def exception_response(
    exc: BaseException, method: str, path: str, *, allow: list[str] | None = None
) -> JSONResponse:
    """The one exception -> response mapping (see the module docstring). ``allow``: the methods the
    path supports, the ``Allow`` header of a 405."""
    if isinstance(exc, ApiError):
        return api_error_response(exc)
    if isinstance(exc, RequestValidationError):
        return validation_error_response(exc)
    if isinstance(exc, HTTPException):  # routing's 404/405, the body guard's 413 while the body streams
        return http_error_response(exc, allow)
    if isinstance(exc, _DATABASE_DOWN):
        return database_down_response(method, path, exc)
    return unexpected_response(method, path, exc)
