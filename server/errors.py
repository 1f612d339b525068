"""Errors the fleet server answers with, each mapped to one HTTP status and one body shape.

    ApiError              500   (only if raised by mistake; never carries a stack trace out)
    ├── BadRequest        400   a value is wrong; ``field`` names it (dotted path, ``scores[2].n_correct``)
    ├── Unauthorized      401   missing/unknown/revoked key or token
    ├── Forbidden         403   the key is valid but may not do this (device key on an admin route)
    ├── NotFound          404   no such resource *for this caller* (another cohort's round is "not found")
    ├── Conflict          409   state conflict: idempotency key mismatch, closed round, job state
    │   └── BelowK        409   fewer than k devices reported: scores may not drive alignment
    ├── PayloadTooLarge   413   body over ``max_body_bytes``
    ├── UnsupportedMedia  415   a body that is not ``application/json``
    ├── RangeNotSatisfiable 416 a Range header outside the content
    ├── Unprocessable     422   a well-formed request the server cannot act on (e.g. aggregate below k)
    ├── RateLimited       429   the key is over its rate limit (``retry_after_s`` in detail)
    ├── NotReady          503   the database is not migrated to the head revision
    └── DatabaseUnavailable 503 the database cannot be reached or stayed busy (retry after a moment)

``ApiError`` is the server's side of an error answer (the agent's side, the answer it received, is
``edge_agent.errors.ServerError``). ``to_body`` gives the wire shape ``{"error": {"type", "message",
"detail"}}`` and :class:`ErrorBody` documents it; :func:`server.responses.exception_response` turns every
exception into its response in one place. ``JobError`` is raised inside job handlers (a failed attempt).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "ApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "BelowK",
    "PayloadTooLarge",
    "UnsupportedMedia",
    "RangeNotSatisfiable",
    "Unprocessable",
    "RateLimited",
    "NotReady",
    "DatabaseUnavailable",
    "JobError",
    "to_body",
    "ErrorBody",
]


class ApiError(Exception):
    """Base of the errors the server answers with on purpose; ``status`` and ``type`` go on the wire."""

    status = 500
    type = "internal"

    def __init__(self, message: str, *, field: str | None = None, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, Any] = dict(detail)
        if field is not None:
            self.detail["field"] = field

    @property
    def field(self) -> str | None:
        return self.detail.get("field")


class BadRequest(ApiError):
    status, type = 400, "bad_request"


class Unauthorized(ApiError):
    status, type = 401, "unauthorized"


class Forbidden(ApiError):
    status, type = 403, "forbidden"


class NotFound(ApiError):
    status, type = 404, "not_found"


class Conflict(ApiError):
    status, type = 409, "conflict"


class BelowK(Conflict):
    type = "below_k"


class PayloadTooLarge(ApiError):
    status, type = 413, "payload_too_large"


class UnsupportedMedia(ApiError):
    status, type = 415, "unsupported_media_type"


class RangeNotSatisfiable(ApiError):
    status, type = 416, "range_not_satisfiable"


class Unprocessable(ApiError):
    status, type = 422, "unprocessable"


class RateLimited(ApiError):
    status, type = 429, "rate_limited"


class NotReady(ApiError):
    status, type = 503, "not_ready"


class DatabaseUnavailable(ApiError):
    """The database dropped the connection, is restarting, or stayed locked past the busy timeout:
    nothing was stored by this request, and the same request may be sent again."""

    status, type = 503, "database_unavailable"


class JobError(Exception):
    """A job attempt failed for a reason worth logging (not retried when ``retry`` is False)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


def to_body(type_: str, message: str, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one error body shape."""
    return {"error": {"type": type_, "message": message, "detail": detail or {}}}


class ErrorInfo(BaseModel):
    type: str = Field(description="What went wrong, for programs (``not_found``, ``validation_error``, ...).")
    message: str = Field(description="What went wrong, for people.")
    detail: dict[str, Any] = Field(
        description="Context; ``field`` names the offending field (``scores[1].n_correct``) when there is one."
    )


class ErrorBody(BaseModel):
    """The body of every answer with status >= 400 (:func:`to_body`)."""

    error: ErrorInfo
