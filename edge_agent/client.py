"""HTTP client for the fleet protocol (:mod:`arte.wire`): timeouts, and retries in one place.

Contract: :class:`ServerClient` sends and receives :mod:`arte.wire` messages (``to_wire``/``from_wire``);
every call goes through :meth:`ServerClient.call`, which retries connection errors, timeouts, 429 and 5xx
answers with exponential backoff and full jitter (:class:`arte.retry.RetryPolicy`; the ``wait`` function is
injectable, so tests never sleep). 4xx answers are not retried: they raise :class:`ServerError` (401/403:
:class:`AuthError`) carrying the server's error body. When every attempt failed, :class:`NetworkError`.
A body that does not match the protocol raises :class:`ServerError` naming the field.

The client knows nothing about the state dir: the outbox (:mod:`edge_agent.sync`) decides what to send
and records what was sent; downloads are in :mod:`edge_agent.download`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import httpx

from arte.retry import RETRY_STATUS, Retryable, RetryPolicy, problem, retry_after_seconds, retry_call
from arte.wire import (
    API_PREFIX,
    DatasetManifest,
    DeviceInfo,
    EnrollRequest,
    EnrollResponse,
    RoundDrafts,
    RoundInfo,
    WireError,
    from_wire,
    to_wire,
)
from edge_agent.errors import AuthError, NetworkError, ServerError

__all__ = ["ServerClient", "Sent", "encode"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Sent:
    """A POST as it went out and what came back (for the sent log)."""

    path: str
    body: str
    status: int
    response: str


def encode(message: Any) -> str:
    """The exact request body for a wire message (what the sent log stores)."""
    return json.dumps(to_wire(message), separators=(",", ":"), sort_keys=True)


def _error(url: str, resp: httpx.Response) -> ServerError:
    try:
        body = resp.json()["error"]
        type_, message, detail = str(body["type"]), str(body["message"]), body.get("detail") or {}
    except (ValueError, KeyError, TypeError):
        type_, message, detail = "http_error", resp.text[:200] or resp.reason_phrase, {}
    cls = AuthError if resp.status_code in (401, 403) else ServerError
    return cls(url, resp.status_code, type_, message, detail if isinstance(detail, dict) else {})


class ServerClient:
    """One server, one device key (None before enrollment). ``transport`` is for tests
    (``httpx.MockTransport``); ``wait`` and ``rng`` drive the backoff; ``on_contact`` is called after any
    answer from the server (the agent records "last contact")."""

    def __init__(self, base_url: str, device_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), wait: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None, transport: httpx.BaseTransport | None = None,
                 on_contact: Callable[[], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.wait = wait
        self.rng = rng or random.Random()
        self.on_contact = on_contact
        headers = {"Authorization": f"Bearer {device_key}"} if device_key else {}
        self._http = httpx.Client(base_url=self.base_url + API_PREFIX, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ServerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}{API_PREFIX}{path}"

    # -- the one retry loop ---------------------------------------------------------------------------------

    def call(self, path: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds, retrying transport errors and retryable statuses."""
        return retry_call(attempt, self.retry, what=path, retry_on=(httpx.TransportError,), wait=self.wait,
                          rng=self.rng, give_up=lambda e, n: NetworkError(self.url(path), problem(e), n))

    def check(self, path: str, resp: httpx.Response) -> httpx.Response:
        """Raise for an error answer (retryable ones as :class:`arte.retry.Retryable`); note the contact."""
        if self.on_contact is not None:
            self.on_contact()
        if resp.status_code in RETRY_STATUS:
            raise Retryable(f"HTTP {resp.status_code}", retry_after_seconds(resp.headers.get("Retry-After")))
        if resp.status_code >= 400:
            raise _error(self.url(path), resp)
        return resp

    def _json(self, method: str, path: str, body: str | None = None) -> httpx.Response:
        def attempt() -> httpx.Response:
            headers = {"Content-Type": "application/json"} if body is not None else None
            resp = self._http.request(method, path, content=body, headers=headers)
            resp.read()
            return self.check(path, resp)

        return self.call(path, attempt)

    def _parse(self, cls: type[T], path: str, resp: httpx.Response) -> T:
        try:
            return from_wire(cls, resp.json())
        except ValueError as e:  # JSONDecodeError and WireError are ValueErrors
            field = e.field if isinstance(e, WireError) else None
            raise ServerError(self.url(path), resp.status_code, "bad_response",
                              f"unexpected answer: {e}", {"field": field} if field else {}) from None

    def stream(self, path: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
        """A streamed GET (one attempt; the caller retries through :meth:`call`)."""
        return self._http.stream("GET", path, headers=headers)  # type: ignore[return-value]

    # -- endpoints ------------------------------------------------------------------------------------------

    def enroll(self, req: EnrollRequest) -> tuple[EnrollResponse, Sent]:
        path, body = "/enroll", encode(req)
        resp = self._json("POST", path, body)
        return self._parse(EnrollResponse, path, resp), Sent(path, body, resp.status_code, resp.text)

    def device_info(self) -> DeviceInfo:
        return self._parse(DeviceInfo, "/devices/me", self._json("GET", "/devices/me"))

    def current_round(self) -> RoundInfo | None:
        """The cohort's open round, or None (404)."""
        try:
            resp = self._json("GET", "/rounds/current")
        except ServerError as e:
            if e.status == 404 and not isinstance(e, AuthError):
                return None
            raise
        return self._parse(RoundInfo, "/rounds/current", resp)

    def round_drafts(self, round_id: str) -> RoundDrafts:
        path = f"/rounds/{round_id}/drafts"
        return self._parse(RoundDrafts, path, self._json("GET", path))

    def latest_dataset(self) -> DatasetManifest | None:
        """The newest dataset manifest for this device's cohort, or None (404)."""
        try:
            resp = self._json("GET", "/datasets/latest")
        except ServerError as e:
            if e.status == 404 and not isinstance(e, AuthError):
                return None
            raise
        return self._parse(DatasetManifest, "/datasets/latest", resp)

    def post(self, path: str, body: str) -> Sent:
        """POST an already encoded body (from the outbox); the answer as :class:`Sent`."""
        resp = self._json("POST", path, body)
        return Sent(path, body, resp.status_code, resp.text)

    def parse(self, cls: type[T], sent: Sent) -> T:
        """Parse the answer of :meth:`post` as ``cls``."""
        return self._parse(cls, sent.path, httpx.Response(sent.status, text=sent.response))
