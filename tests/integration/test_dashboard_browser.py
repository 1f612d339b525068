"""The dashboard in headless Chromium (Debian's ``chromium``, driven by Playwright for Python) against a
real server on loopback (uvicorn in a thread, SQLite) whose fleet was seeded through the HTTP API.

Checks what a person would: without the key the page shows only the login form and no fleet data,
and the data endpoints answer 401; a wrong key is refused on the form; with the admin key every number,
chart bar and point matches the admin API; the page makes no request outside the server and logs no
error (CSP included); the login survives a reload and logout clears it; and the screenshots are
non-blank PNGs of the expected size. Skips, saying why, when Chromium or Playwright is not installed
(``.ci/run`` installs Debian's chromium)."""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.dashboard_support import Seeded, seed_fleet
from tests.support.live_server import free_port, wait_ready
from tests.support.server_support import Backend, Clock, make_admin_key

API = "/api/v1"
VIEWPORT = {"width": 1280, "height": 960}
expect: Any = None  # playwright.sync_api.expect, imported by the browser fixture (playwright is optional)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("ARTE_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium not installed (apt-get install chromium chromium-driver; .ci/run does it as root)")
    return path


@dataclass
class LiveFleet:
    url: str
    admin_key: str
    seeded: Seeded
    http: httpx.Client

    def get(self, path: str, key: str | None = None) -> Any:
        r = self.http.get(API + path, headers={"Authorization": f"Bearer {key or self.admin_key}"})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def live_fleet(sqlite_backend: Backend, tmp_path: Path) -> Iterator[LiveFleet]:
    import uvicorn

    from server import db
    from server.app import create_app

    settings = sqlite_backend.settings(tmp_path / "data", rate_limit_per_s=0)
    engine = db.make_engine(settings.resolved_database_url())
    db.upgrade(engine)
    sessions = db.make_sessionmaker(engine)
    admin_key = make_admin_key(sessions)
    clock = Clock()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine, clock=clock), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=30)
    try:
        wait_ready(url)
        seeded = seed_fleet(http, {"Authorization": f"Bearer {admin_key}"}, clock, settings, sessions)
        yield LiveFleet(url, admin_key, seeded, http)
    finally:
        http.close()
        server.should_exit = True
        thread.join(timeout=30)
        engine.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e .[dev])")
    global expect
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


def check_png(path: Path, width: int, height: int | None = None) -> int:
    """Assert ``path`` is a PNG of the given size (``height`` None: taller than the viewport) that is
    not blank; returns its number of distinct colors."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width == width, img.size
        assert img.height == height if height is not None else img.height > VIEWPORT["height"], img.size
        rgb = img.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 20) or []
    n_pixels = rgb.width * rgb.height
    dominant = max(n for n, _ in colors)
    assert len(colors) > 50, f"{path.name} looks blank: {len(colors)} colors"
    assert dominant < 0.9 * n_pixels, f"{path.name} is {dominant / n_pixels:.0%} one color"
    return len(colors)


def test_without_the_key_nothing_leaks(live_fleet: LiveFleet, browser: Any) -> None:
    for path in ("/dashboard/summary", "/devices", "/cohorts", "/rounds", "/jobs", "/datasets", "/reports", "/metrics"):
        r = live_fleet.http.get(API + path)
        assert r.status_code == 401 and set(r.json()) == {"error"}, (path, r.text)
    assert live_fleet.http.get("/metrics").status_code == 401
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(live_fleet.url + "/dashboard")
    page.wait_for_selector("#login-form", state="visible")
    assert page.is_hidden("#dash")
    html = page.content()
    for name in (*live_fleet.seeded.devices, *live_fleet.seeded.cohorts):
        assert name not in html
    # a wrong key and a device key are refused on the form, and nothing is kept
    for key, message in (("arte_ak_adm_00000000000000000000000000000000_wrong", "not accepted"),
                         (live_fleet.seeded.devices["pi5-garage"][1]["Authorization"][7:], "not the admin key")):
        page.fill("#admin-key", key)
        page.click("#login-button")
        expect(page.locator("#login-error")).to_contain_text(message)
        assert page.is_hidden("#dash")
        assert page.evaluate("sessionStorage.getItem('arte.adminKey')") is None
        page.evaluate("document.getElementById('login-error').textContent = ''")
    page.close()


def test_dashboard_shows_the_fleet(live_fleet: LiveFleet, browser: Any, tmp_path: Path) -> None:
    lf = live_fleet
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(20_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith(lf.url) else problems.append(f"request to {r.url}"))

    page.goto(lf.url + "/dashboard")
    page.fill("#admin-key", lf.admin_key)
    page.click("#login-button")
    page.wait_for_selector("body[data-loaded]")
    assert page.is_visible("#dash") and page.is_hidden("#login")

    cohorts, devices, rounds = lf.get("/cohorts"), lf.get("/devices"), lf.get("/rounds")
    reports, jobs, datasets, metrics = lf.get("/reports"), lf.get("/jobs"), lf.get("/datasets"), lf.get("/metrics")
    cards = {el.get_attribute("data-total"): int(el.query_selector(".value").inner_text())
             for el in page.query_selector_all("#totals .card")}
    assert cards == {"cohorts": len(cohorts), "devices": len(devices), "rounds": len(rounds),
                     "reports": len(reports), "jobs": len(jobs), "datasets": len(datasets), "metrics": len(metrics)}
    assert cards["reports"] == 7 and cards["jobs"] == 6

    # reports per round: one bar per round, its value from GET /rounds
    bars = {b.get_attribute("data-round"): int(b.get_attribute("data-value"))
            for b in page.query_selector_all("#chart-reports rect.bar")}
    assert bars == {r["round_id"]: r["n_reports"] for r in rounds}
    assert sorted(bars.values()) == [2, 2, 3]

    # job states: one segment per (kind, state) present, counts from GET /jobs
    segments = {(s.get_attribute("data-kind"), s.get_attribute("data-state")): int(s.get_attribute("data-value"))
                for s in page.query_selector_all("#chart-jobs rect[data-state]")}
    assert segments == dict(Counter((j["kind"], j["state"]) for j in jobs))
    legend = page.inner_text("#chart-jobs .legend")
    for state, n in Counter(j["state"] for j in jobs).items():
        assert f"{state} {n}" in legend

    # accuracy per device over time: a before and an after point per metrics record
    def points() -> dict[tuple[str, str], list[float]]:
        out: dict[tuple[str, str], list[float]] = {}
        for c in page.query_selector_all("#chart-accuracy circle"):
            out.setdefault((c.get_attribute("data-device"), c.get_attribute("data-series")), []).append(
                float(c.get_attribute("data-value")))
        return out

    def expected(shots: str) -> dict[tuple[str, str], list[float]]:
        out: dict[tuple[str, str], list[float]] = {}
        for m in metrics:
            for series in ("before", "after"):
                out.setdefault((m["device_id"], series), []).append(m[series][shots])
        return out

    assert points() == expected("zero_shot")
    page.click("#chart-accuracy .toggle button[data-shots=three_shot]")
    assert points() == expected("three_shot")
    page.click("#chart-accuracy .toggle button[data-shots=zero_shot]")
    assert points() == expected("zero_shot")
    assert len(page.query_selector_all("#chart-accuracy .legend [data-device]")) == 5

    # tables: one row per resource; devices show last contact and the revoked key
    for table, n in (("cohorts", 2), ("devices", 5), ("rounds", 3), ("jobs", 6), ("datasets", 3), ("accuracy", 7)):
        assert int(page.get_attribute(f"#table-{table} table", "data-rows")) == n, table
    revoked_row = page.locator("#table-devices tr", has_text="laptop-bo")
    assert "revoked" in revoked_row.inner_text()
    kitchen_row = page.locator("#table-devices tr", has_text="pi5-kitchen").inner_text()
    assert "0 s ago" in kitchen_row  # it called the server at the summary's own clock time
    attic_row = page.locator("#table-devices tr", has_text="pi5-attic").inner_text()
    assert "never" not in attic_row and "d ago" in attic_row
    assert "tailor" in page.inner_text("#table-jobs") and "no-teacher.gguf" in page.inner_text("#table-jobs")

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot))
    check_png(shot, VIEWPORT["width"], VIEWPORT["height"])
    full = tmp_path / "dashboard-full.png"
    page.screenshot(path=str(full), full_page=True)
    check_png(full, VIEWPORT["width"])

    # the key lives in this tab: a reload stays logged in; logout forgets it
    page.reload()
    page.wait_for_selector("body[data-loaded]")
    assert page.is_visible("#dash")
    page.click("#logout")
    page.wait_for_selector("#login-form", state="visible")
    assert page.is_hidden("#dash")
    assert page.evaluate("sessionStorage.getItem('arte.adminKey')") is None
    html = page.content()
    for name in (*lf.seeded.devices, *lf.seeded.cohorts, lf.seeded.devices["pi5-kitchen"][0]):
        assert name not in html, name
    assert problems == []
    page.close()
