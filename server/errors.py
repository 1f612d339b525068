"""Errors of the fleet server, each mapped to one HTTP status and one body shape.

    ServerError                 (500 only if raised by mistake; never carries a stack trace out)
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
    └── NotReady          503   the database is not migrated to the head revision

``to_body`` gives the wire shape ``{"error": {"type", "message", "detail"}}``; :mod:`server.app`
converts every error in one place. ``JobError`` is raised inside job handlers (a failed attempt).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ServerError",
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
    "JobError",
    "to_body",
]


class ServerError(Exception):
    """Base of the errors the server raises on purpose; ``status`` and ``type`` go on the wire."""

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


class BadRequest(ServerError):
    status, type = 400, "bad_request"


class Unauthorized(ServerError):
    status, type = 401, "unauthorized"


class Forbidden(ServerError):
    status, type = 403, "forbidden"


class NotFound(ServerError):
    status, type = 404, "not_found"


class Conflict(ServerError):
    status, type = 409, "conflict"


class BelowK(Conflict):
    type = "below_k"


class PayloadTooLarge(ServerError):
    status, type = 413, "payload_too_large"


class UnsupportedMedia(ServerError):
    status, type = 415, "unsupported_media_type"


class RangeNotSatisfiable(ServerError):
    status, type = 416, "range_not_satisfiable"


class Unprocessable(ServerError):
    status, type = 422, "unprocessable"


class RateLimited(ServerError):
    status, type = 429, "rate_limited"


class NotReady(ServerError):
    status, type = 503, "not_ready"


class JobError(Exception):
    """A job attempt failed for a reason worth logging (not retried when ``retry`` is False)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


def to_body(type_: str, message: str, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one error body shape."""
    return {"error": {"type": type_, "message": message, "detail": detail or {}}}
