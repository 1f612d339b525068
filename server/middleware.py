"""ASGI middleware: request bodies are guarded before any route sees them; in-flight requests are capped.

:class:`BodyGuard` refuses, with the one error body shape: a body larger than the limit (413; checked on
``Content-Length`` and again while streaming, so a lying or chunked client cannot get past it) and a
body on ``/api/v1`` that is not ``application/json`` (415). The limit is ``max_body_bytes`` except on
the admin dataset upload path, which gets ``max_upload_bytes``.

:class:`ConcurrencyLimit` lets at most ``limit`` requests per process past it at once; the others wait
in the event loop, in arrival order. Why: the routes are synchronous, and FastAPI runs each request's
steps (dependencies, the route, the response validation) one after another on a shared pool of 40
threads. When more requests wait for a database connection or the SQLite write lock than there are
threads, the request that holds the connection cannot get a thread to finish (validate its response,
commit, give the connection back): every thread waits on it until the pool or busy timeout expires
(measured: 64 concurrent enrollments on SQLite stalled 30 s and failed). With ``limit`` below the
thread count every admitted request can always get its next thread. A request leaves the limit when
its response starts (its transaction has committed by then), so slow downloads do not hold a slot.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from starlette.exceptions import HTTPException

from arte.wire import API_PREFIX
from server.errors import to_body

__all__ = ["BodyGuard", "ConcurrencyLimit"]

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


class ConcurrencyLimit:
    """At most ``limit`` requests per event loop between arrival and response start (0: no limit)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        sem = self._sems.get(loop)
        if sem is None:
            sem = self._sems[loop] = asyncio.Semaphore(self.limit)
        await sem.acquire()
        held = True

        async def release_on_start(message: dict[str, Any]) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                sem.release()
            await send(message)

        try:
            await self.app(scope, receive, release_on_start)
        finally:
            if held:
                held = False
                sem.release()
