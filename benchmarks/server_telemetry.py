"""What do the dashboard and the Prometheus metrics cost the fleet server?

Two questions, each with its plain baseline measured in the same run:

1. Per request: the ``RequestMetrics`` middleware (request counter, latency histogram, route template,
   receipt peek) wraps every request. Measured on a trivial ASGI app called directly in a loop, with and
   without the middleware, for a plain GET and for a report POST (where it also reads the receipt's
   ``duplicate`` flag). The difference is the middleware's own cost, free of HTTP and database noise.
2. Per read: ``GET /api/v1/dashboard/summary`` (the page's one request) and ``GET /metrics`` (a scrape,
   which counts the fleet in the database) on a seeded SQLite fleet of ``--devices`` devices, against
   ``GET /api/v1/health`` (the HTTP stack, no database) and ``GET /api/v1/devices`` (the existing admin
   list of every device). In-process over FastAPI's TestClient; median of ``--repeat`` calls.

The fleet is inserted with the ORM (reports without per-draft scores, which neither read touches), so
the seeding takes seconds, not the hours real enrollments would.

    python benchmarks/server_telemetry.py [--devices 2000] [--repeat 7] [--calls 20000]

Prints a table, then one line of JSON (last line) with the numbers, versions and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from benchmarks._env import machine_info, versions  # noqa: E402
from server import db
from server.app import create_app
from server.security import new_secret
from server.settings import ServerSettings
from server.tables import (
    AdminKey,
    Cohort,
    Dataset,
    Device,
    DeviceMetrics,
    Job,
    Report,
    Round,
    Task,
    new_id,
    utcnow,
)
from server.telemetry import RequestMetrics, Telemetry


class _Route:
    path_format = "/api/v1/rounds/{round_id}/reports"


async def _trivial_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["route"] = _Route()  # what routing leaves in the scope
    body = b'{"report_id": "rep_x", "duplicate": false}'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def middleware_cost(calls: int) -> dict[str, float]:
    """Microseconds per request: the trivial app alone, and wrapped, for a GET and a report POST."""

    telemetry = Telemetry(sessionmaker(sa.create_engine("sqlite://")))
    wrapped = RequestMetrics(_trivial_app, telemetry)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: dict[str, Any]) -> None:
        return None

    async def loop(app: Any, method: str, path: str) -> float:
        scope = {"type": "http", "method": method, "path": path, "headers": []}
        start = time.perf_counter()
        for _ in range(calls):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - start) / calls * 1e6

    out = {}
    for name, method, path in (("get", "GET", "/api/v1/rounds/rnd_1/drafts"),
                               ("report_post", "POST", "/api/v1/rounds/rnd_1/reports")):
        out[f"{name}_bare_us"] = min(asyncio.run(loop(_trivial_app, method, path)) for _ in range(3))
        out[f"{name}_wrapped_us"] = min(asyncio.run(loop(wrapped, method, path)) for _ in range(3))
        out[f"{name}_overhead_us"] = out[f"{name}_wrapped_us"] - out[f"{name}_bare_us"]
    return out


def seed(sessions: Any, n_devices: int) -> dict[str, int]:
    """Insert a fleet with the ORM: 4 cohorts, ``n_devices`` devices, 40 rounds (half the cohort's
    devices report to each), 40 datasets, 2 fine-tunes per device, 200 jobs in mixed states."""

    now = utcnow()
    counts = {"devices": n_devices, "reports": 0, "metrics": 0}
    with db.transaction(sessions) as s:
        task = Task(id=new_id("tsk"), name="bench", instruction="x", seeds=[], created_at=now)
        s.add(task)
        s.flush()  # no ORM relationships: flush parents before children so foreign keys hold
        cohorts = [Cohort(id=new_id("coh"), name=f"c{i}", task_id=task.id, student_model="default",
                          profile_class="rpi5", privacy={}, min_devices=3, adapter=None, created_at=now)
                   for i in range(4)]
        s.add_all(cohorts)
        s.flush()
        devices = [Device(id=new_id("dev"), key_hash="0" * 64, name=f"d{i}", cohort_id=cohorts[i % 4].id,
                          profile_id="rpi5", hardware={}, agent_version="0.1", enrolled_at=now,
                          last_seen_at=now - timedelta(minutes=i % 600), revoked_at=None)
                   for i in range(n_devices)]
        s.add_all(devices)
        s.flush()
        for r in range(40):
            cohort = cohorts[r % 4]
            rnd = Round(id=new_id("rnd"), cohort_id=cohort.id, state="closed" if r < 36 else "open", mode="loglik",
                        max_new_tokens=64, min_items=10, privacy={}, n_drafts=20,
                        created_at=now + timedelta(minutes=r), closes_at=None, closed_at=None)
            s.add(rnd)
            s.flush()
            members = [d for d in devices if d.cohort_id == cohort.id][::2]
            s.add_all([Report(id=new_id("rep"), round_id=rnd.id, device_id=d.id, idempotency_key=f"{r}",
                              mode="loglik", privacy={}, agent_version="0.1", n_scores=20, received_at=now)
                       for d in members])
            counts["reports"] += len(members)
            ds = Dataset(id=new_id("dat"), cohort_id=cohort.id, round_id=rnd.id, sha256="0" * 64, size=4096,
                         n_examples=100, content=b"{}\n", teacher="t", adapter=None, signature=None, counts={},
                         created_at=now + timedelta(minutes=r))
            s.add(ds)
            s.flush()
            if r >= 38:
                acc = {"zero_shot": 0.4, "three_shot": 0.5, "n_items": 40}
                s.add_all([DeviceMetrics(id=new_id("met"), device_id=d.id, dataset_id=ds.id, idempotency_key=f"{r}",
                                         adapter_version="v", before=acc, after=acc, kept=True, train_seconds=1.0,
                                         agent_version="0.1", received_at=now + timedelta(minutes=r))
                           for d in devices if d.cohort_id == cohort.id])
                counts["metrics"] += n_devices // 4
        states = ("queued", "running", "succeeded", "failed", "cancelled")
        s.add_all([Job(id=new_id("job"), kind="aggregate", cohort_id=cohorts[0].id, round_id=None, params={},
                       state=states[i % 5], attempts=1, max_attempts=3, worker_id=None, progress=None, result=None,
                       error=None, cancel_requested=False, created_at=now + timedelta(seconds=i))
                   for i in range(200)])
    return counts


def read_costs(n_devices: int, repeat: int) -> tuple[dict[str, float], dict[str, int]]:
    """Median milliseconds per call of each read on the seeded fleet."""

    with tempfile.TemporaryDirectory() as tmp:
        settings = ServerSettings(data_dir=Path(tmp), rate_limit_per_s=0)
        engine = db.make_engine(settings.resolved_database_url())
        db.upgrade(engine)
        sessions = db.make_sessionmaker(engine)
        row_id = new_id("adm")
        key, key_hash = new_secret("ak", row_id)
        with db.transaction(sessions) as s:
            s.add(AdminKey(id=row_id, key_hash=key_hash, created_at=utcnow()))
        counts = seed(sessions, n_devices)
        client = TestClient(create_app(settings, engine=engine))
        admin = {"Authorization": f"Bearer {key}"}
        out = {}
        for name, path in (("health", "/api/v1/health"), ("devices_list", "/api/v1/devices"),
                           ("summary", "/api/v1/dashboard/summary"), ("metrics_scrape", "/metrics")):
            client.get(path, headers=admin)  # warm
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                r = client.get(path, headers=admin)
                times.append((time.perf_counter() - start) * 1e3)
                assert r.status_code == 200, r.text
            out[f"{name}_ms"] = statistics.median(times)
            out[f"{name}_bytes"] = len(r.content)
        client.close()
        engine.dispose()
    return out, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=2000, help="Devices in the seeded fleet.")
    ap.add_argument("--repeat", type=int, default=7, help="Calls per read (median reported).")
    ap.add_argument("--calls", type=int, default=20000, help="Requests per middleware loop.")
    args = ap.parse_args()

    mw = middleware_cost(args.calls)
    reads, counts = read_costs(args.devices, args.repeat)
    print("middleware cost per request (trivial ASGI app, direct calls)")
    print(f"{'request':<14}{'bare µs':>10}{'wrapped µs':>12}{'overhead µs':>13}")
    for name in ("get", "report_post"):
        print(f"{name:<14}{mw[name + '_bare_us']:>10.2f}{mw[name + '_wrapped_us']:>12.2f}{mw[name + '_overhead_us']:>13.2f}")
    print(f"\nreads on a fleet of {counts['devices']} devices, {counts['reports']} reports, "
          f"{counts['metrics']} fine-tunes, 200 jobs (median of {args.repeat})")
    print(f"{'endpoint':<16}{'ms':>9}{'bytes':>10}")
    for name in ("health", "devices_list", "summary", "metrics_scrape"):
        print(f"{name:<16}{reads[name + '_ms']:>9.1f}{reads[name + '_bytes']:>10}")
    print(json.dumps({
        "benchmark": "server_telemetry", "args": vars(args), "fleet": counts, "middleware": mw, "reads": reads,
        "versions": versions(["fastapi", "starlette", "SQLAlchemy", "prometheus-client", "uvicorn"]),
        "machine": machine_info(),
    }))


if __name__ == "__main__":
    main()
