"""``GET /metrics`` (Prometheus): who may read it, and that what it says matches what happened, read
back with ``prometheus_client.parser``. Request counters and latency per route template, errors by
status, reports/enrollments/device metrics by outcome, dataset downloads and bytes, fleet gauges from
the database; a failing database gives ``arte_db_up 0``; several processes with
PROMETHEUS_MULTIPROC_DIR add up to one exposition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.dashboard_support import seed_fleet
from tests.support.server_support import Backend, Fleet, build_fleet, make_admin_key, samples, scrape

API = "/api/v1"
ROOT = Path(__file__).resolve().parents[2]


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_needs_the_admin_key_or_the_scrape_token(sqlite_backend: Backend, tmp_path: Path) -> None:
    f = build_fleet(sqlite_backend, tmp_path, metrics_token="scrape-secret-123")
    try:
        cohort = f.cohort(k=1)
        _, device = f.device(cohort)
        assert f.client.get("/metrics").status_code == 401
        assert f.client.get("/metrics", headers=device).status_code == 403
        wrong = f.client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-124"})
        assert wrong.status_code == 401 and set(wrong.json()) == {"error"}
        token = {"Authorization": "Bearer scrape-secret-123"}
        assert f.client.get("/metrics", headers=token).status_code == 200
        assert f.client.get("/metrics", headers=f.admin).status_code == 200
        # the scrape token opens /metrics and nothing else
        for path in ("/devices", "/dashboard/summary", "/cohorts"):
            assert f.client.get(API + path, headers=token).status_code == 401
    finally:
        f.client.close()
        f.engine.dispose()


def test_without_a_token_setting_only_the_admin_key_reads_metrics(sqlite_fleet: Fleet) -> None:
    assert sqlite_fleet.settings.metrics_token is None
    assert sqlite_fleet.client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    assert sqlite_fleet.client.get("/metrics", headers=sqlite_fleet.admin).status_code == 200


def test_counters_match_what_happened(fleet: Fleet) -> None:
    seeded = seed_fleet(fleet.client, fleet.admin, fleet.clock, fleet.settings, fleet.sessions)
    c = fleet.client
    kitchen = seeded.devices["pi5-kitchen"][1]
    r2 = seeded.rounds[1]
    # a duplicate re-send, a rejected report, a refused enrollment
    dup = {"idempotency_key": f"{r2}-pi5-kitchen", "mode": "cot-choice",
           "scores": [{"draft_id": "d0", "n_items": 10, "n_correct": 7},
                      {"draft_id": "d1", "n_items": 10, "n_correct": 3}]}
    assert c.post(f"{API}/rounds/{r2}/reports", json=dup, headers=kitchen).json()["duplicate"] is True
    bad = {**dup, "idempotency_key": "other", "scores": [{"draft_id": "nope", "n_items": 1, "n_correct": 0}]}
    assert c.post(f"{API}/rounds/{r2}/reports", json=bad, headers=kitchen).status_code == 409
    refused = {"token": "arte_et_tok_00000000000000000000000000000000_x", "device_name": "x", "profile_id": "p"}
    assert c.post(f"{API}/enroll", json=refused).status_code == 401
    # downloads: whole, a range, not-modified, a range past the end
    ds = fleet.ok(c.get(f"{API}/datasets/{seeded.datasets[1]}", headers=kitchen))
    url = f"{API}/datasets/{ds['dataset_id']}/content"
    assert len(c.get(url, headers=kitchen).content) == ds["size"]
    assert c.get(url, headers={**kitchen, "Range": "bytes=0-9"}).status_code == 206
    assert c.get(url, headers={**kitchen, "If-None-Match": f'"{ds["sha256"]}"'}).status_code == 304
    assert c.get(url, headers={**kitchen, "Range": f"bytes={ds['size'] + 5}-"}).status_code == 416
    # refused before routing (413) and a path that matches no route
    huge = b'{"x": "' + b"a" * (fleet.settings.max_body_bytes + 10) + b'"}'
    assert c.post(f"{API}/rounds/{r2}/reports", content=huge, headers={**kitchen, "Content-Type": "application/json"}).status_code == 413
    assert c.get("/no/such/path").status_code == 404

    m = scrape(fleet)
    assert value(m, "arte_reports_received_total", outcome="stored") == 7
    assert value(m, "arte_reports_received_total", outcome="duplicate") == 1
    assert value(m, "arte_reports_received_total", outcome="rejected") == 2  # the 409 and the 413
    assert value(m, "arte_enrollments_total", outcome="stored") == 5
    assert value(m, "arte_enrollments_total", outcome="rejected") == 1
    assert value(m, "arte_device_metrics_received_total", outcome="stored") == 7
    assert value(m, "arte_dataset_served_bytes_total") == ds["size"] + 10
    for status, n in (("200", 1), ("206", 1), ("304", 1), ("416", 1)):
        assert value(m, "arte_dataset_downloads_total", status=status) == n

    reports_route = f"{API}/rounds/{{round_id}}/reports"
    assert value(m, "arte_http_requests_total", method="POST", route=reports_route, status="200") == 8
    assert value(m, "arte_http_errors_total", method="POST", route=reports_route, status="413") == 1
    assert value(m, "arte_http_errors_total", method="POST", route=reports_route, status="409") == 1
    assert value(m, "arte_http_errors_total", method="GET", route="unmatched", status="404") == 1
    assert value(m, "arte_http_errors_total", method="POST", route=f"{API}/enroll", status="401") == 1
    assert not any(dict(labels).get("route", "").startswith(f"{API}/rounds/rnd_") for _, labels in m)
    # every counted request has one latency observation under the same route template
    requests: dict[tuple[str, str], float] = {}
    for (name, labels), v in m.items():
        if name == "arte_http_requests_total":
            d = dict(labels)
            requests[(d["method"], d["route"])] = requests.get((d["method"], d["route"]), 0) + v
    for (method, route), n in requests.items():
        assert value(m, "arte_http_request_duration_seconds_count", method=method, route=route) == n
        assert value(m, "arte_http_request_duration_seconds_bucket", method=method, route=route, le="+Inf") == n
        assert value(m, "arte_http_request_duration_seconds_sum", method=method, route=route) > 0

    # fleet gauges come from the database and agree with the admin API
    jobs = fleet.ok(c.get(f"{API}/jobs", headers=fleet.admin))
    for kind in ("aggregate", "elicit", "align", "tailor"):
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            expected = sum(j["kind"] == kind and j["state"] == state for j in jobs)
            assert value(m, "arte_jobs", kind=kind, state=state) == expected, (kind, state)
    assert value(m, "arte_jobs", kind="aggregate", state="succeeded") == 2
    assert value(m, "arte_devices", state="active") == 4 and value(m, "arte_devices", state="revoked") == 1
    assert value(m, "arte_rounds", state="open") == 2 and value(m, "arte_rounds", state="closed") == 1
    assert value(m, "arte_cohorts") == 2 and value(m, "arte_reports_stored") == 7
    datasets = fleet.ok(c.get(f"{API}/datasets", headers=fleet.admin))
    assert value(m, "arte_datasets_stored") == 3
    assert value(m, "arte_datasets_stored_bytes") == sum(d["size"] for d in datasets)
    assert value(m, "arte_db_up") == 1


def test_openmetrics_when_asked(sqlite_fleet: Fleet) -> None:
    r = sqlite_fleet.client.get(
        "/metrics", headers={**sqlite_fleet.admin, "Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_a_failing_database_is_arte_db_up_0(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import sessionmaker

    from server.telemetry import FleetCollector

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}")
    families = list(FleetCollector(sessionmaker(engine)).collect())
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [("arte_db_up", [0])]


_CHILD = r"""
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from server import db
from server.app import create_app
from server.settings import ServerSettings
settings = ServerSettings(data_dir=Path(sys.argv[1]), rate_limit_per_s=0)
client = TestClient(create_app(settings))
for _ in range(int(sys.argv[2])):
    assert client.get("/api/v1/health").status_code == 200
print(json.dumps(client.get("/metrics", headers={"Authorization": "Bearer " + sys.argv[3]}).text))
"""


def test_multiprocess_mode_adds_up_every_process(tmp_path: Path) -> None:
    """Three server processes share PROMETHEUS_MULTIPROC_DIR; a scrape from any of them sums all."""
    from server import db

    data = tmp_path / "data"
    data.mkdir()
    engine = db.make_engine(f"sqlite:///{data / 'arte.db'}")
    db.upgrade(engine)
    admin_key = make_admin_key(db.make_sessionmaker(engine))
    engine.dispose()
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom), "PYTHONPATH": str(ROOT)}

    def run(n: int) -> Any:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(data), str(n), admin_key], env=env,
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
        return samples(json.loads(out.stdout.strip().splitlines()[-1]))

    run(3)
    run(4)
    m = run(5)
    assert len(list(prom.glob("*.db"))) >= 1
    assert value(m, "arte_http_requests_total", method="GET", route=f"{API}/health", status="200") == 12
    assert value(m, "arte_http_request_duration_seconds_count", method="GET", route=f"{API}/health") == 12
    # two earlier scrapes were counted by their processes; this one is counted after it answers
    assert value(m, "arte_http_requests_total", method="GET", route="/metrics", status="200") == 2
    assert value(m, "arte_db_up") == 1 and value(m, "arte_cohorts") == 0
