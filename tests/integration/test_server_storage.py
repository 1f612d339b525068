"""One storage suite for every backend (SQLite file, PostgreSQL schema): migrations, constraints,
transactions, and the job queue's mechanics (atomic claim under concurrent workers, heartbeat,
dead-worker retry, failure with logs, cancel) driven by the real ``aggregate`` job."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from server import db, queue, reports
from server.schemas import JobIn
from server.tables import Aggregate, Base, Job, Report, utcnow
from server.worker import Worker
from tests.support.server_support import START, Fleet


def test_migrations_reach_head_and_match_the_models(fleet: Fleet) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert db.current_revision(fleet.engine) == db.head_revision()
    db.check_current(fleet.engine)
    with fleet.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == []


def test_unmigrated_database_is_refused(backend, tmp_path) -> None:
    from server.app import create_app
    from server.errors import NotReady

    settings = backend.settings(tmp_path)
    engine = db.make_engine(settings.resolved_database_url(), schema=settings.db_schema)
    with pytest.raises(NotReady, match="arte-server init"):
        create_app(settings, engine=engine)
    assert db.upgrade(engine) == db.head_revision()
    assert db.upgrade(engine) == db.head_revision()  # idempotent
    create_app(settings, engine=engine)
    engine.dispose()


def test_sqlite_pragmas(tmp_path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    engine.dispose()


def test_foreign_keys_and_unique_report_per_device_round(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort()
    dev, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=1)
    f.ok(f.report(rnd, a, [("d0", 4, 2)]))
    with pytest.raises(IntegrityError):
        with db.transaction(f.sessions) as s:
            s.add(
                Report(
                    id="rep_" + "0" * 32,
                    round_id=rnd,
                    device_id=dev,
                    idempotency_key="x",
                    mode="cot-choice",
                    privacy={},
                    agent_version="",
                    n_scores=0,
                    received_at=START,
                )
            )
    with pytest.raises(IntegrityError):
        with db.transaction(f.sessions) as s:
            s.add(
                Report(
                    id="rep_" + "1" * 32,
                    round_id="rnd_" + "9" * 32,
                    device_id=dev,
                    idempotency_key="y",
                    mode="cot-choice",
                    privacy={},
                    agent_version="",
                    n_scores=0,
                    received_at=START,
                )
            )


def test_a_failed_request_stores_nothing(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort()
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=2)
    # the first score is fine and would be inserted first; the second fails: nothing may remain
    r = f.report(rnd, a, [("d0", 4, 2), ("d1", 4, 5)])
    assert r.status_code == 400
    with f.engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM reports")).scalar_one() == 0
        assert c.execute(sa.text("SELECT count(*) FROM report_scores")).scalar_one() == 0


def test_times_come_back_utc_aware(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort()
    with db.transaction(f.sessions) as s:
        job = queue.submit(s, JobIn(kind="elicit", cohort_id=cohort), START, 3)
    with db.transaction(f.sessions) as s:
        got = s.get(Job, job.id)
        assert got.created_at == START and got.created_at.utcoffset() == timedelta(0)


def _aggregate_job(f: Fleet, k: int = 1, max_attempts: int = 3) -> tuple[str, str]:
    cohort = f.cohort(k=k)
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=2)
    f.ok(f.report(rnd, a, [("d0", 10, 4), ("d1", 10, 9)]))
    body = {"kind": "aggregate", "cohort_id": cohort, "round_id": rnd, "max_attempts": max_attempts}
    return f.ok(f.client.post("/api/v1/jobs", json=body, headers=f.admin), 201)["job_id"], rnd


def _worker(f: Fleet, name: str) -> Worker:
    return Worker(f.settings, f.sessions, worker_id=name, clock=f.clock, heartbeat_thread=False)


def _job(f: Fleet, job_id: str) -> dict:
    return f.ok(f.client.get(f"/api/v1/jobs/{job_id}", headers=f.admin))


def test_worker_runs_aggregate_job(fleet: Fleet) -> None:
    f = fleet
    job_id, rnd = _aggregate_job(f)
    assert _worker(f, "w1").run_once() == job_id
    job = _job(f, job_id)
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["result"]["n_devices"] == 1
    stored = f.ok(f.client.get(f"/api/v1/aggregates/{rnd}/stored", headers=f.admin))
    assert stored["job_id"] == job_id and stored["drafts"]["d1"]["score"] == pytest.approx(0.9)
    assert _worker(f, "w1").run_once() is None


def test_dead_worker_job_is_requeued_and_retried(fleet: Fleet) -> None:
    f = fleet
    job_id, _ = _aggregate_job(f)
    dead = queue.claim(f.sessions, "dead-worker", f.clock())  # claims, then never heartbeats
    assert dead is not None and dead.job_id == job_id
    f.clock.advance(f.settings.job_dead_after_s - 1)
    assert _worker(f, "w2").run_once() is None  # not dead yet: nothing to do
    f.clock.advance(2)
    assert _worker(f, "w2").run_once() is None  # re-queued: the next attempt waits its backoff
    f.clock.advance(f.settings.job_retry_base_s)
    assert _worker(f, "w2").run_once() == job_id
    job = _job(f, job_id)
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["worker_id"] == "w2"
    assert queue.succeed(f.sessions, dead, {"stale": True}, f.clock()) is False  # the dead one lost it
    assert queue.heartbeat(f.sessions, dead, f.clock()) == "lost"
    logs = f.ok(f.client.get(f"/api/v1/jobs/{job_id}/logs", headers=f.admin))
    assert any("stopped heartbeating" in x["message"] and x["level"] == "warning" for x in logs)


def test_heartbeat_keeps_a_job_alive_and_attempts_run_out(fleet: Fleet) -> None:
    f = fleet
    job_id, _ = _aggregate_job(f, max_attempts=2)
    c1 = queue.claim(f.sessions, "w1", f.clock())
    for _ in range(3):
        f.clock.advance(f.settings.job_dead_after_s - 1)
        assert queue.heartbeat(f.sessions, c1, f.clock(), progress=0.5) == "ok"
        assert queue.requeue_dead(f.sessions, f.clock(), f.settings.job_dead_after_s) == []
    assert _job(f, job_id)["progress"] == 0.5
    f.clock.advance(f.settings.job_dead_after_s + 1)
    assert queue.requeue_dead(f.sessions, f.clock(), f.settings.job_dead_after_s) == [job_id]
    c2 = queue.claim(f.sessions, "w2", f.clock())
    assert c2.attempt == 2
    f.clock.advance(f.settings.job_dead_after_s + 1)
    queue.requeue_dead(f.sessions, f.clock(), f.settings.job_dead_after_s)
    job = _job(f, job_id)
    assert job["state"] == "failed" and "no attempts left" in job["error"]


def test_failure_is_logged_and_not_retried(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort(k=1)
    rnd = f.round(cohort, n_drafts=1)
    with db.transaction(f.sessions) as s:  # a round of another cohort: the handler must refuse it
        other = f.cohort(k=1)
        job = queue.create_job(
            s, kind="aggregate", cohort_id=other, round_id=rnd, params={}, max_attempts=3, now=f.clock()
        )
    assert _worker(f, "w1").run_once() == job.id
    got = _job(f, job.id)
    assert got["state"] == "failed" and got["attempts"] == 1 and "not a round of cohort" in got["error"]
    logs = f.ok(f.client.get(f"/api/v1/jobs/{job.id}/logs", headers=f.admin))
    assert [x["level"] for x in logs] == ["info", "error"]


def test_align_below_k_fails_in_the_worker_with_a_clear_error(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort(k=3)
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=1)
    f.ok(f.report(rnd, a, [("d0", 3, 1)]))
    with db.transaction(f.sessions) as s:  # bypasses the API's check, as a job queued before reports vanished
        job = queue.create_job(
            s, kind="align", cohort_id=cohort, round_id=rnd, params={}, max_attempts=3, now=f.clock()
        )
    _worker(f, "w1").run_once()
    got = _job(f, job.id)
    assert got["state"] == "failed" and "fewer than the cohort's k=3" in got["error"]


def test_cancel_running_job_stops_it_at_the_next_heartbeat(fleet: Fleet) -> None:
    f = fleet
    job_id, rnd = _aggregate_job(f)
    w = _worker(f, "w1")
    claim = queue.claim(f.sessions, "w1", f.clock())
    assert _job(f, job_id)["state"] == "running"
    assert f.ok(f.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=f.admin))["cancel_requested"] is True
    assert queue.heartbeat(f.sessions, claim, f.clock()) == "cancel"
    assert w.run(claim) == "cancelled"
    job = _job(f, job_id)
    assert job["state"] == "cancelled" and job["result"] is None
    with db.transaction(f.sessions) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Aggregate)) == 0


def test_concurrent_workers_claim_each_job_exactly_once(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort(k=1)
    rnd = f.round(cohort, n_drafts=1)
    n_jobs, n_workers = 24, 6
    with db.transaction(f.sessions) as s:
        for _ in range(n_jobs):
            queue.create_job(
                s, kind="aggregate", cohort_id=cohort, round_id=rnd, params={}, max_attempts=1, now=f.clock()
            )
    barrier = threading.Barrier(n_workers)
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait()
            mine = claimed.setdefault(name, [])
            while (c := queue.claim(f.sessions, name, utcnow())) is not None:
                mine.append(c.job_id)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = [j for ids in claimed.values() for j in ids]
    assert len(every) == n_jobs and len(set(every)) == n_jobs
    with db.transaction(f.sessions) as s:
        rows = list(s.scalars(sa.select(Job)))
        assert all(j.state == "running" and j.attempts == 1 for j in rows)
        assert {j.id: j.worker_id for j in rows} == {j: w for w, ids in claimed.items() for j in ids}


def test_concurrent_duplicate_reports_store_one(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort()
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=1)
    n = 6
    barrier = threading.Barrier(n)
    out: list[tuple[int, bool | None]] = []

    def send() -> None:
        from fastapi.testclient import TestClient

        with TestClient(f.app) as c:
            barrier.wait()
            r = c.post(
                f"/api/v1/rounds/{rnd}/reports",
                headers=a,
                json={
                    "idempotency_key": "same",
                    "mode": "cot-choice",
                    "scores": [{"draft_id": "d0", "n_items": 5, "n_correct": 1}],
                },
            )
            out.append((r.status_code, r.json().get("duplicate")))

    threads = [threading.Thread(target=send) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [(200, False)] + [(200, True)] * (n - 1)
    with db.transaction(f.sessions) as s:
        assert len(reports.list_reports(s, round_id=rnd)) == 1
