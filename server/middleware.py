"""ASGI middleware that guards request bodies before any route sees them.

:class:`BodyGuard` refuses, with the one error body shape: a body larger than the limit (413; checked on
``Content-Length`` and again while streaming, so a lying or chunked client cannot get past it) and a
body on ``/api/v1`` that is not ``application/json`` (415). The limit is ``max_body_bytes`` except on
the admin dataset upload path, which gets ``max_upload_bytes``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException

from arte.wire import API_PREFIX
from server.errors import to_body

__all__ = ["BodyGuard"]

_BODY_METHODS = {"POST", "PUT", "PATCH"}
UPLOAD_PATHS = (f"{API_PREFIX}/datasets",)


async def _send_error(send: Any, status: int, type_: str, message: str, detail: dict[str, Any]) -> None:
    body = json.dumps(to_body(type_, message, detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """Size and content-type checks for request bodies (see the module docstring)."""

    def __init__(self, app: Any, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.max_upload_bytes if path in UPLOAD_PATHS else self.max_body_bytes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await _send_error(
                    send, 400, "bad_request", "Content-Length is not a number", {"field": "content-length"}
                )
                return
            if int(length) > limit:
                await _send_error(
                    send,
                    413,
                    "payload_too_large",
                    f"request body over {limit} bytes",
                    {"field": "body", "limit": limit, "size": int(length)},
                )
                return
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = (length is not None and int(length) > 0) or "transfer-encoding" in headers
        if path.startswith(API_PREFIX) and has_body and ctype != "application/json":
            await _send_error(
                send,
                415,
                "unsupported_media_type",
                f"request body must be application/json, got {ctype or 'no content type'}",
                {"field": "content-type", "got": ctype},
            )
            return

        received = 0

        async def guarded_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # an HTTPException passes through FastAPI's body parsing to the one error handler
                    raise HTTPException(
                        413,
                        detail={
                            "message": f"request body over {limit} bytes",
                            "field": "body",
                            "limit": limit,
                        },
                    )
            return message

        await self.app(scope, guarded_receive, send)
