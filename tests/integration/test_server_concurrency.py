"""Many requests at once against `arte-server serve` on loopback: every one is answered correctly.

Regression for a stall found by the load benchmark: with 64 clients enrolling at once on SQLite, the
request holding the write lock could not get one of the 40 route threads to finish (all of them waited on
the database), so every request waited out the 30 s busy timeout and failed (500/503). The in-flight
request cap and the per-process SQLite write queue (``server.middleware.ConcurrencyLimit``,
``server.db``) make these all succeed; the test asserts the answers, never a duration. (Checked: with
``ARTE_SERVER_MAX_CONCURRENT_REQUESTS=0`` the SQLite case fails with 503 after the busy timeout.)
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fault_support import Serve, pg_cluster, stored_reports

N = 64


def _burst(srv: Serve, n: int) -> list[dict[str, Any]]:
    task = srv.admin("POST", "/tasks", {"name": "t", "instruction": "i"})["task_id"]
    cohort = srv.admin("POST", "/cohorts", {"name": "c", "task_id": task, "student_model": "default",
                                            "profile_class": "laptop-cpu", "min_devices": 1})["cohort_id"]
    drafts = [{"id": f"d{j}", "question": "q", "rationale": "r <ans>a</ans>", "answer": "a"} for j in range(64)]
    rnd = srv.admin("POST", "/rounds", {"cohort_id": cohort, "drafts": drafts})["round_id"]
    tokens = [srv.admin("POST", "/tokens", {"cohort_id": cohort})["token"] for _ in range(n)]
    start = threading.Barrier(n)

    def device(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=f"{srv.url}/api/v1", timeout=120) as c:
            c.get("/health")  # connected: the enrollments below leave together
            start.wait()
            r = c.post("/enroll", json={"token": tokens[i], "device_name": f"d{i}", "profile_id": "p"})
            assert r.status_code == 201, r.text
            key = r.json()["device_key"]
            body = {"idempotency_key": f"k{i}", "mode": "cot-choice",
                    "scores": [{"draft_id": f"d{j}", "n_items": 4, "n_correct": j % 5} for j in range(64)]}
            h = {"Authorization": f"Bearer {key}"}
            drafts_resp = c.get(f"/rounds/{rnd}/drafts", headers=h)
            assert drafts_resp.status_code == 200 and len(drafts_resp.json()["drafts"]) == 64
            rep = c.post(f"/rounds/{rnd}/reports", content=json.dumps(body),
                         headers={**h, "Content-Type": "application/json"})
            assert rep.status_code == 200, rep.text
            return rep.json()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(device, range(n)))


@pytest.mark.parametrize("workers", [1, 2])
def test_64_devices_at_once_on_sqlite_all_succeed(tmp_path: Path, workers: int) -> None:
    srv = Serve({}, tmp_path / "data", workers=workers).start()
    try:
        receipts = _burst(srv, N)
    finally:
        srv.stop()
    stored = stored_reports(f"sqlite:///{tmp_path / 'data' / 'arte.db'}")
    assert len(stored) == N and {r["report_id"] for r in receipts} == {v[0] for v in stored.values()}
    assert all(n == 64 for _, n in stored.values())


def test_64_devices_at_once_on_postgres_all_succeed(tmp_path: Path) -> None:
    with pg_cluster() as cluster:
        srv = Serve({"ARTE_SERVER_DATABASE_URL": cluster.url}, tmp_path / "data", workers=2).start()
        try:
            receipts = _burst(srv, N)
        finally:
            srv.stop()
        stored = stored_reports(cluster.url)
    assert len(stored) == N and {r["report_id"] for r in receipts} == {v[0] for v in stored.values()}
