"""The fleet dashboard: a static page at ``/dashboard`` and its one data endpoint (admin).

How the page authenticates: it is plain HTML + one script + one stylesheet (``server/static/``), the
same bytes for everyone, holding no fleet data. Its login form takes the admin key, keeps it in the
tab's ``sessionStorage`` (gone when the tab closes, never sent in a cookie, so there is no CSRF
surface) and calls ``GET /api/v1/dashboard/summary`` with ``Authorization: Bearer <key>``; without a
valid admin key that endpoint answers 401 (403 for a device key) like every admin endpoint, and the page
shows the login form again. The page's Content-Security-Policy allows only its own script and
stylesheet and requests to this origin (no inline script, no third-party origin), and the script writes
server data into the page with ``textContent`` only, so a device name cannot inject markup.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from arte.wire import API_PREFIX
from server import dashboard
from server.deps import AdminDep, NowDep, SessionDep
from server.errors import NotFound

__all__ = ["router", "PAGE_PATH", "CSP"]

router = APIRouter(tags=["dashboard"])

PAGE_PATH = "/dashboard"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@lru_cache(maxsize=None)
def _asset(name: str) -> bytes:
    return resources.files("server").joinpath("static", name).read_bytes()


@router.get(
    f"{API_PREFIX}/dashboard/summary",
    response_model=dashboard.Summary,
)
def summary(
    _: AdminDep,
    s: SessionDep,
    now: NowDep,
    limit: Annotated[
        int, Query(ge=1, le=dashboard.MAX_LIMIT, description="Most rows per list (newest first).")
    ] = dashboard.DEFAULT_LIMIT,
) -> dashboard.Summary:
    """Everything the dashboard shows in one read: totals, cohorts, devices and their last contact,
    rounds with their report counts, jobs by kind and state, datasets, and before/after accuracy per
    device over time."""
    return dashboard.summary(s, now, limit)


@router.get(PAGE_PATH, include_in_schema=False)
def page() -> Response:
    """The dashboard page (static; it fetches the data itself with the admin key)."""
    return Response(_asset("dashboard.html"), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


@router.get(PAGE_PATH + "/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    """The page's script and stylesheet (only those two names; anything else is 404)."""
    if name not in _ASSETS:
        raise NotFound(f"no dashboard asset {name!r}", field="name")
    return Response(_asset(name), media_type=_ASSETS[name], headers=_PAGE_HEADERS)
