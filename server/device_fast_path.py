"""The device hot path in plain ASGI: the three requests that make up a fleet's steady load, answered
without FastAPI's routing and dependencies and without a transaction of their own.

Per round every device pulls ``GET /rounds/{id}/drafts`` and posts ``POST /rounds/{id}/reports``, and
every few rounds reads ``GET /datasets/latest``. Through the routes each costs FastAPI's route matching
over every router (~0.1 ms of CPU before the route runs), a worker thread, a transaction (on SQLite the
write lock, even to read) with the key's row, and the report its own commit. :class:`DeviceFastPath`, an
ASGI middleware inside the body guard and the in-flight cap (sizes, content types, the cap and the
request metrics apply as before), answers them itself when it can answer exactly as the routes would,
and otherwise hands the request on untouched:

* ``POST /rounds/{id}/reports`` (well-formed id, a device key in ``Authorization: Bearer``): the body is
  read (413 from the guard), the key's rate taken (429), the body parsed and validated as the route does
  (:func:`server.deps.parse_body`); a valid report goes to the group commit (:mod:`server.groupcommit`),
  which checks the key in the transaction that stores the report (401) and applies the report's rules
  (:mod:`server.report_store`); an invalid one gets the key checked first (401), as the route would,
  then its 400/422.
* ``GET /rounds/{id}/drafts`` and ``GET /datasets/latest``, when the key is one the database verified
  within ``device_key_cache_s`` and whose last contact needs no update (:mod:`server.keycache`): the
  rate (429), then the round's drafts from the process cache (read once on a read-only session when
  the round is new here; 404 for another cohort's round) or the manifest from one statement on a
  read-only connection.

Answers are the routes' answers byte for byte (``tests/integration/test_server_device_fast_path.py``); errors go
through :func:`server.responses.exception_response` as the app's handlers do. The one difference: a
key revoked by another API process may still read (never write) for ``device_key_cache_s``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from arte import wire
from server import fleet, responses, security, timings
from server.datasets import latest_manifest
from server.deps import device_key_valid, parse_body, rate_limit, unknown_key
from server.groupcommit import PendingReport
from server.keycache import KnownDevice
from server.routes import datasets, reports, rounds
from server.schemas import ReportIn
from server.tables import ID_PATTERN, Device

__all__ = ["DeviceFastPath"]

_ROUNDS = f"{wire.API_PREFIX}/rounds/"
_LATEST = f"{wire.API_PREFIX}/datasets/latest"
_ID = re.compile(ID_PATTERN)
_RECEIPT = TypeAdapter(wire.ReportReceipt)
_MANIFEST = TypeAdapter(wire.DatasetManifest)
_KEY = sa.select(Device.key_hash, Device.revoked_at)

# (scope, receive, device id, secret, round id, now) -> the answer, or None to hand the request on
Handler = Callable[[dict[str, Any], Any, str, str, str, datetime], Awaitable[Response | None]]


def _route(router: Any, endpoint: Any) -> Any:
    """The route object of ``endpoint`` (the request metrics label a request with its path template)."""
    return next(r for r in router.routes if getattr(r, "endpoint", None) is endpoint)


class DeviceFastPath:
    """The device hot path (see the module docstring); ``state`` is the app's ``app.state``."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        self.state = state
        self._loading: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[tuple[str, bytes]]] = {}
        self._routes = {
            self._report: _route(reports.router, reports.submit),
            self._drafts: _route(rounds.router, rounds.drafts),
            self._manifest: _route(datasets.router, datasets.latest),
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not await self._answered(scope, receive, send):
            await self.app(scope, receive, send)

    async def _answered(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Answer the request (True), or leave it untouched for the routes (False)."""
        method, path = scope["method"], scope["path"]
        handler, round_id = self._match(method, path)
        key = _device_key(scope) if handler is not None else None
        if handler is None or key is None:
            return False
        try:
            response = await handler(scope, receive, *key, round_id, self.state.clock())
            if response is None:
                return False
        except Exception as e:  # as the app's handlers answer it (one mapping: server.responses)
            response = responses.exception_response(e, method, path)
        scope["route"] = self._routes[handler]
        await response(scope, receive, send)
        return True

    def _match(self, method: str, path: str) -> tuple[Handler | None, str]:
        if not self.state.settings.device_fast_path:
            return None, ""
        if method == "GET" and path == _LATEST:
            return self._manifest, ""
        if not path.startswith(_ROUNDS):
            return None, ""
        round_id, _, rest = path[len(_ROUNDS) :].partition("/")
        if not _ID.fullmatch(round_id):
            return None, ""
        if method == "POST" and rest == "reports":
            return self._report, round_id
        if method == "GET" and rest == "drafts":
            return self._drafts, round_id
        return None, ""

    async def _report(
        self, scope: dict[str, Any], receive: Any, device_id: str, secret: str, round_id: str, now: datetime
    ) -> Response:
        timing = timings.record(scope)
        timings.mark(timing, "fast")
        raw = await _read_body(receive)
        rate_limit(self.state.limiter, device_id)
        body, problems = parse_body(raw, ReportIn)
        if problems:  # the route's order: the key's 401 before the body's problems
            await run_in_threadpool(self._check_key, device_id, secret)
            raise RequestValidationError(problems)
        timings.mark(timing, "submit")
        pending = PendingReport(device_id, secret, round_id, body, now, timing)
        receipt = await self.state.report_writer.submit(pending)
        timings.mark(timing, "resumed")
        return Response(_RECEIPT.dump_json(receipt), media_type="application/json")

    def _check_key(self, device_id: str, secret: str) -> None:
        with self.state.engine.connect() as conn:
            if not device_key_valid(conn.execute(_KEY.where(Device.id == device_id)).first(), secret):
                raise unknown_key()

    def _cached_key(self, device_id: str, secret: str, now: datetime) -> KnownDevice | None:
        """The caller from the key cache, its rate taken (429); None: the routes must read the key."""
        known = self.state.device_keys.lookup(device_id, secret, now)
        if known is not None:
            rate_limit(self.state.limiter, device_id)
        return known

    async def _drafts(
        self, scope: dict[str, Any], receive: Any, device_id: str, secret: str, round_id: str, now: datetime
    ) -> Response | None:
        known = self._cached_key(device_id, secret, now)
        if known is None:
            return None
        cached = fleet.cached_round_drafts_json(round_id) or await self._load_drafts(round_id)
        data = fleet.drafts_json_for(cached, round_id, known.cohort_id)
        return Response(data, media_type="application/json")

    async def _load_drafts(self, round_id: str) -> tuple[str, bytes]:
        """A round's drafts the first time they are pulled here, read once however many devices ask for
        them at the same moment (they all do when a round opens), on a read-only session."""
        key = (asyncio.get_running_loop(), round_id)
        loading = self._loading.get(key)
        if loading is None:

            def read() -> tuple[str, bytes]:
                with self.state.sessions() as s:
                    return fleet.load_round_drafts_json(s, round_id)

            loading = self._loading[key] = asyncio.ensure_future(run_in_threadpool(read))
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)

    async def _manifest(
        self, scope: dict[str, Any], receive: Any, device_id: str, secret: str, round_id: str, now: datetime
    ) -> Response | None:
        known = self._cached_key(device_id, secret, now)
        if known is None:
            return None

        def read() -> wire.DatasetManifest:
            with self.state.engine.connect() as conn:  # a read: no write lock, nothing to commit
                return latest_manifest(conn, known.cohort_id)

        manifest = await run_in_threadpool(read)
        return Response(_MANIFEST.dump_json(manifest), media_type="application/json")


def _device_key(scope: dict[str, Any]) -> tuple[str, str] | None:
    """(device id, secret) of a device key in the first ``Authorization: Bearer`` header (the one
    Starlette reads), or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, credentials = get_authorization_scheme_param(value.decode("latin-1"))
            return security.parse_secret(credentials, "dk") if scheme.lower() == "bearer" else None
    return None


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
