"""Prometheus metrics of the fleet server: what each process counts, and what the database holds.

Two sources, one exposition (``GET /metrics``, :mod:`server.routes.telemetry`):

* **Per-process events**, counted by the ASGI middleware :class:`RequestMetrics` around every request
  (it is the outermost layer, so requests refused before routing, such as a 413, are counted too):
  requests and their latency per *route template* (``/api/v1/rounds/{round_id}/reports``, never the raw
  path, so the label set stays bounded; a path that matches no route is ``unmatched``), errors by
  status, and the protocol's events read off the routes' answers: reports received (``stored``,
  ``duplicate`` re-sends, ``rejected``), enrollments, device metrics, dataset downloads and the bytes
  served. The middleware reads only the status and, for the two receipt routes, the small JSON receipt
  (its ``duplicate`` flag); it changes nothing the routes send.
* **Fleet state**, read from the database at scrape time by :class:`FleetCollector`: jobs by kind and
  state, devices (active/revoked), rounds (open/closed), campaigns by state and their finished rounds,
  teacher adapters, cohorts, stored reports and datasets. Any
  process can answer these, so they are right however many workers serve the API. A database error
  is logged and exposed as ``arte_db_up 0`` instead of failing the whole scrape.

Several worker processes (uvicorn ``--workers``): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory in the environment of the server before it starts (prometheus_client reads it when it is
first imported). Each process then writes its counters to files there and every scrape, whichever
worker answers it, sums them (:class:`prometheus_client.multiprocess.MultiProcessCollector`). Empty
the directory between server runs. Without the variable the counters are per process (right for one
worker).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any, Iterable

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from arte.wire import API_PREFIX
from server.campaigns import STATES as CAMPAIGN_STATES
from server.schemas import JOB_KINDS, JOB_STATES
from server.tables import Adapter, Campaign, CampaignRound, Cohort, Dataset, Device, Job, Report, Round

__all__ = ["Telemetry", "RequestMetrics", "FleetCollector", "install", "multiprocess_dir", "UNMATCHED"]

logger = logging.getLogger(__name__)

UNMATCHED = "unmatched"
REPORTS_ROUTE = ("POST", f"{API_PREFIX}/rounds/{{round_id}}/reports")
METRICS_ROUTE = ("POST", f"{API_PREFIX}/metrics")
ENROLL_ROUTE = ("POST", f"{API_PREFIX}/enroll")
CONTENT_ROUTE = ("GET", f"{API_PREFIX}/datasets/{{dataset_id}}/content")
_RECEIPT_MAX_BYTES = 64 << 10  # receipts are ~200 bytes; anything larger is not read


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multi-process mode, when the environment sets one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _outcome(status: int, duplicate: bool | None) -> str:
    if status >= 500:
        return "error"
    if status >= 400:
        return "rejected"
    return "duplicate" if duplicate else "stored"


class Telemetry:
    """The counters and histograms of one app, in their own registry (each app counts from zero)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.fleet = FleetCollector(sessions)
        r = self.registry
        route = ["method", "route", "status"]
        self.requests = Counter(
            "arte_http_requests", "HTTP requests by method, route template and status.", route, registry=r
        )
        self.latency = Histogram(
            "arte_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, per route template.",
            ["method", "route"],
            registry=r,
        )
        self.errors = Counter(
            "arte_http_errors", "Responses with status >= 400 by method, route template and status.",
            route,
            registry=r,
        )
        outcome = ["outcome"]
        self.reports = Counter(
            "arte_reports_received",
            "Reports posted by devices: stored, duplicate (an idempotent re-send), rejected (4xx), error.",
            outcome,
            registry=r,
        )
        self.enrollments = Counter(
            "arte_enrollments", "Enrollment attempts: stored (a new device), rejected, error.", outcome,
            registry=r,
        )
        self.device_metrics = Counter(
            "arte_device_metrics_received",
            "Before/after accuracy records posted by devices: stored, duplicate, rejected, error.",
            outcome,
            registry=r,
        )
        self.downloads = Counter(
            "arte_dataset_downloads", "Dataset content responses by status (200, 206, 304, 416).", ["status"],
            registry=r,
        )
        self.bytes_served = Counter(
            "arte_dataset_served_bytes", "Dataset content bytes sent (200 and 206 bodies).", registry=r
        )
        self.registry.register(self.fleet)
        # (method, route, status) -> its labelled series; bounded by routes x methods x statuses
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The text exposition (Prometheus text format, or OpenMetrics when asked for) and its content
        type. In multi-process mode the counters are summed over every process's files."""
        registry: Collector = self.registry
        if multiprocess_dir():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            registry.register(self.fleet)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type

    def observe(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        body_bytes: int,
        receipt: bytes | None,
    ) -> None:
        """Record one finished request (called by :class:`RequestMetrics`)."""
        code = str(status)
        children = self._children.get((method, route, status))
        if children is None:  # first request of this kind: resolve the labelled series once
            children = (
                self.requests.labels(method, route, code),
                self.latency.labels(method, route),
                self.errors.labels(method, route, code) if status >= 400 else None,
            )
            self._children[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()
        key = (method, route)
        if key == REPORTS_ROUTE or key == METRICS_ROUTE:
            counter = self.reports if key == REPORTS_ROUTE else self.device_metrics
            counter.labels(_outcome(status, _duplicate(receipt))).inc()
        elif key == ENROLL_ROUTE:
            self.enrollments.labels(_outcome(status, False)).inc()
        elif key == CONTENT_ROUTE:
            self.downloads.labels(code).inc()
            if status in (200, 206):
                self.bytes_served.inc(body_bytes)


def _duplicate(receipt: bytes | None) -> bool | None:
    if not receipt:
        return None
    try:
        value = json.loads(receipt)
    except ValueError:
        return None
    return value.get("duplicate") is True if isinstance(value, dict) else None


def _route_template(scope: dict[str, Any], templates: "_OpenApiTemplates") -> str:
    """The matched route's path template; for a request answered before routing (413, 415), the
    documented template its method and path would have matched."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path_format"):
        return route.path_format
    return templates(scope.get("app"), scope["method"], scope["path"])


class _OpenApiTemplates:
    """Maps a method and raw path to its OpenAPI path template (literal segments win over parameters:
    ``/datasets/latest`` before ``/datasets/{dataset_id}``); built once, on first use, from the app's
    own schema, so it needs no knowledge of the router's internals."""

    def __init__(self) -> None:
        self._table: list[tuple[re.Pattern[str], str, frozenset[str]]] | None = None

    def __call__(self, app: Any, method: str, path: str) -> str:
        if self._table is None:
            paths = app.openapi().get("paths", {}) if app is not None else {}
            table = [
                (
                    re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)) + "$"),
                    p,
                    frozenset(m.upper() for m in ops),
                )
                for p, ops in paths.items()
            ]
            self._table = sorted(table, key=lambda row: row[1].count("{"))
        for regex, template, methods in self._table:
            if method in methods and regex.match(path):
                return template
        return UNMATCHED


class RequestMetrics:
    """ASGI middleware: times each HTTP request and hands it to :meth:`Telemetry.observe`."""

    def __init__(self, app: Any, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry
        self.templates = _OpenApiTemplates()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        status = 500
        body_bytes = 0
        receipt: bytearray | None = None
        path: str = scope["path"]
        # the two receipt routes: their 200 body says whether the post was an idempotent re-send
        wants_receipt = method == "POST" and (
            path == METRICS_ROUTE[1] or (path.startswith(f"{API_PREFIX}/rounds/") and path.endswith("/reports"))
        )

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, body_bytes, receipt
            if message["type"] == "http.response.start":
                status = message["status"]
                if wants_receipt and status == 200:
                    receipt = bytearray()
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                body_bytes += len(chunk)
                if receipt is not None and len(receipt) + len(chunk) <= _RECEIPT_MAX_BYTES:
                    receipt += chunk
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.telemetry.observe(
                method,
                _route_template(scope, self.templates),
                status,
                time.perf_counter() - start,
                body_bytes,
                bytes(receipt) if receipt is not None else None,
            )


class FleetCollector(Collector):
    """Fleet state read from the database at scrape time (gauges; see the module docstring)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily: describing must not query the database at registration

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("arte_db_up", "1 when the database answered this scrape's queries.")
        try:
            metrics = self._read()
        except SQLAlchemyError:
            logger.exception("metrics scrape: the database query failed")
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *metrics]

    def _read(self) -> list[Metric]:
        with self.sessions() as s:
            jobs = GaugeMetricFamily("arte_jobs", "Jobs by kind and state.", labels=["kind", "state"])
            counts = {(k, st): 0 for k in JOB_KINDS for st in JOB_STATES}
            for kind, state, n in s.execute(
                sa.select(Job.kind, Job.state, sa.func.count()).group_by(Job.kind, Job.state)
            ):
                counts[(kind, state)] = int(n)
            for (kind, state), n in sorted(counts.items()):
                jobs.add_metric([kind, state], n)

            devices = GaugeMetricFamily("arte_devices", "Enrolled devices by key state.", labels=["state"])
            revoked = int(s.scalar(sa.select(sa.func.count(Device.revoked_at))) or 0)
            total = int(s.scalar(sa.select(sa.func.count()).select_from(Device)) or 0)
            devices.add_metric(["active"], total - revoked)
            devices.add_metric(["revoked"], revoked)

            rounds = GaugeMetricFamily("arte_rounds", "Rounds by state.", labels=["state"])
            by_state = dict.fromkeys(("open", "closed"), 0)
            for state, n in s.execute(sa.select(Round.state, sa.func.count()).group_by(Round.state)):
                by_state[state] = int(n)
            for state, n in sorted(by_state.items()):
                rounds.add_metric([state], n)

            campaigns = GaugeMetricFamily("arte_campaigns", "Campaigns by state.", labels=["state"])
            by_state = dict.fromkeys(CAMPAIGN_STATES, 0)
            for state, n in s.execute(sa.select(Campaign.state, sa.func.count()).group_by(Campaign.state)):
                by_state[state] = int(n)
            for state, n in sorted(by_state.items()):
                campaigns.add_metric([state], n)

            def gauge(name: str, doc: str, query: Any) -> GaugeMetricFamily:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], float(s.scalar(query) or 0))
                return g

            return [
                jobs,
                devices,
                rounds,
                campaigns,
                gauge(
                    "arte_campaign_rounds_done",
                    "Campaign rounds whose dataset was published.",
                    sa.select(sa.func.count()).select_from(CampaignRound).where(CampaignRound.finished_at.is_not(None)),
                ),
                gauge(
                    "arte_adapters",
                    "Teacher adapters written by align jobs.",
                    sa.select(sa.func.count()).select_from(Adapter),
                ),
                gauge("arte_cohorts", "Cohorts.", sa.select(sa.func.count()).select_from(Cohort)),
                gauge("arte_reports_stored", "Reports stored.", sa.select(sa.func.count()).select_from(Report)),
                gauge(
                    "arte_datasets_stored", "Datasets stored.", sa.select(sa.func.count()).select_from(Dataset)
                ),
                gauge(
                    "arte_datasets_stored_bytes",
                    "Sum of the stored datasets' sizes.",
                    sa.select(sa.func.coalesce(sa.func.sum(Dataset.size), 0)),
                ),
            ]


def install(app: Any) -> Telemetry:
    """Give ``app`` its metrics (``app.state.telemetry``) and the request middleware. Call it last in
    ``create_app`` so the middleware is the outermost layer."""
    telemetry = Telemetry(app.state.sessions)
    app.state.telemetry = telemetry
    app.add_middleware(RequestMetrics, telemetry=telemetry)
    return telemetry
