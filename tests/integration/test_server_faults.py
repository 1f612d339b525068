"""Faults, with real processes: the server killed with SIGKILL during a burst of reports, PostgreSQL
restarted under load, the job worker killed in the middle of a job, the agent's state dir full or
read-only. The retrying side is the real edge-agent code (State outbox, ``deliver``, ServerClient with
its retry loop; only its wait between retries is injected, so nothing sleeps).

The property checked every time, in the database itself: every report an agent holds a receipt for is
stored exactly once, with all its scores; every report in an outbox is eventually delivered.

PostgreSQL runs as a throwaway cluster (initdb + pg_ctl in a temp dir on a free port; skipped, saying so,
without the server binaries), so restarting it disturbs nobody.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.fault_support import (
    ROOT,
    AgentBox,
    Serve,
    count_reports,
    deliver_all,
    enroll_agents,
    pg_cluster,
    poll,
    queue_reports,
    stored_reports,
)

N_DRAFTS = 64
DRAFTS = [{"id": f"d{j}", "question": f"Is {j} even?", "rationale": "Look at the last digit. <ans>yes</ans>",
           "answer": "yes"} for j in range(N_DRAFTS)]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The server's database: an SQLite file, or a throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        yield {"url": f"sqlite:///{tmp_path / 'data' / 'arte.db'}", "env": {}, "cluster": None, "workers": 1}
        return
    with pg_cluster() as cluster:
        yield {"url": cluster.url, "env": {"ARTE_SERVER_DATABASE_URL": cluster.url}, "cluster": cluster,
               "workers": 2}


def fleet(srv: Serve, tmp_path: Path, n_agents: int, n_rounds: int) -> tuple[list[AgentBox], list[str], int]:
    task = srv.admin("POST", "/tasks", {"name": "evenness", "instruction": "Is the number even?"})["task_id"]
    cohort = srv.admin("POST", "/cohorts", {"name": "laptops", "task_id": task, "student_model": "default",
                                            "profile_class": "laptop-cpu", "min_devices": 1})["cohort_id"]
    rounds = [srv.admin("POST", "/rounds", {"cohort_id": cohort, "drafts": DRAFTS})["round_id"]
              for _ in range(n_rounds)]
    agents = enroll_agents(srv, cohort, n_agents, tmp_path / "agents")
    return agents, rounds, queue_reports(agents, rounds, N_DRAFTS)


def assert_exactly_once(agents: list[AgentBox], url: str, total: int) -> None:
    """Every outbox item delivered with a receipt; the database holds each report once, whole."""
    from edge_agent.state import State

    stored = stored_reports(url)
    assert len(stored) == total, (len(stored), total)
    for a in agents:
        with State(a.dir) as st:
            assert st.outbox_counts() == {"delivered": total // len(agents)}, st.outbox_counts()
            for item in st.sent(limit=10_000):
                assert item["status"] == 200, item
            for (device, round_id), (report_id, n_scores) in stored.items():
                if device != a.device_id:
                    continue
                receipt = st.outbox(f"{round_id}:{device}").receipt
                assert receipt is not None and receipt["report_id"] == report_id, (receipt, report_id)
                assert n_scores == N_DRAFTS


def test_server_killed_during_a_burst_loses_no_report(database: dict[str, Any], tmp_path: Path) -> None:
    """kill -9 of `arte-server serve` (all its workers) while 8 agents deliver 192 reports; restarted,
    the agents re-send what has no receipt; nothing is lost and nothing is stored twice."""
    srv = Serve(database["env"], tmp_path / "data", workers=database["workers"]).start()
    try:
        # big enough that the burst is still running when the kill lands (96 reports were all stored
        # between the poll and the kill once a batch no longer scanned the reports table)
        agents, _, total = fleet(srv, tmp_path, n_agents=8, n_rounds=24)
        burst = threading.Thread(target=lambda: results.extend(deliver_all(agents, srv.url)))
        results: list[Any] = []
        burst.start()
        poll(lambda: count_reports(database["url"]) >= 5, "the burst to store 5 reports")
        srv.kill9()
        at_kill = count_reports(database["url"])
        burst.join()
        assert at_kill < total, "the burst ended before the kill: nothing was tested"
        assert any(not isinstance(d, Exception) and d.pending > 0 for d in results), results
        srv.start()
        second = deliver_all(agents, srv.url)
        assert all(not isinstance(d, Exception) and d.pending == 0 and not d.rejected for d in second), second
        assert_exactly_once(agents, database["url"], total)
    finally:
        srv.stop()


def test_postgres_restarted_under_load_the_server_recovers_by_itself(tmp_path: Path) -> None:
    """PostgreSQL stops (fast: sessions aborted) and starts again while agents deliver; the same server
    process serves again afterwards (pool pre-ping), in-flight requests got 503 and were re-sent."""
    with pg_cluster() as cluster:
        srv = Serve({"ARTE_SERVER_DATABASE_URL": cluster.url}, tmp_path / "data", workers=2).start()
        try:
            assert srv.proc is not None
            pid = srv.proc.pid
            agents, _, total = fleet(srv, tmp_path, n_agents=8, n_rounds=12)
            results: list[Any] = []
            burst = threading.Thread(target=lambda: results.extend(deliver_all(agents, srv.url)))
            burst.start()
            poll(lambda: count_reports(cluster.url) >= 10, "the burst to store 10 reports")
            cluster.restart("fast")
            burst.join()
            assert srv.proc is not None and srv.proc.pid == pid and srv.proc.poll() is None
            second = deliver_all(agents, srv.url)
            assert all(not isinstance(d, Exception) and d.pending == 0 and not d.rejected for d in second), second
            assert_exactly_once(agents, cluster.url, total)
            assert srv.proc.poll() is None and srv.proc.pid == pid
            # requests caught by the restart were answered 503 database_unavailable (and re-sent)
            assert "database unavailable" in (tmp_path / "data" / "serve.log").read_text()
        finally:
            srv.stop()


def test_worker_killed_mid_job_the_job_is_retried_and_finishes(tmp_path: Path) -> None:
    """`arte-server worker` claims an aggregate job and is killed while the job runs (held mid-way by a
    table lock, checked in pg_locks, so the kill lands inside the job, not before or after it). The job
    is re-queued when its heartbeat is stale (the clock is injected) and another worker finishes it; the
    killed attempt stored nothing."""
    import psycopg
    import sqlalchemy as sa

    from server import db
    from server.tables import Aggregate, Job
    from server.worker import Worker
    from tests.support.server_support import Backend, build_fleet

    with pg_cluster() as cluster:
        f = build_fleet(Backend("postgres", cluster.url), tmp_path)
        try:
            cohort = f.cohort(k=1)
            rnd = f.round(cohort, n_drafts=3)
            for _ in range(3):
                _, dev = f.device(cohort)
                f.ok(f.report(rnd, dev, [("d0", 5, 2), ("d1", 5, 4)]))
            job = f.ok(f.client.post("/api/v1/jobs", json={"kind": "aggregate", "cohort_id": cohort,
                                                           "round_id": rnd}, headers=f.admin), 201)["job_id"]
            blocker = psycopg.connect(cluster.url.replace("postgresql+psycopg", "postgresql"))
            blocker.execute("LOCK TABLE aggregates IN EXCLUSIVE MODE")  # the job's INSERT will wait here
            env = {**os.environ, "ARTE_SERVER_DATA_DIR": str(tmp_path / "data"),
                   "ARTE_SERVER_DATABASE_URL": cluster.url,
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            worker = subprocess.Popen([sys.executable, "-m", "server.cli", "--log-level", "WARNING", "worker"],
                                      env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            try:
                def job_waits_on_the_lock() -> bool:
                    with f.engine.connect() as c:
                        state = c.execute(sa.select(Job.state).where(Job.id == job)).scalar_one()
                        waiting = c.execute(sa.text(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted "
                            "AND relation = 'aggregates'::regclass")).scalar_one()
                    return state == "running" and waiting > 0

                poll(job_waits_on_the_lock, "the worker to claim the job and block inside it", 120)
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
            finally:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
                blocker.rollback()
                blocker.close()
            with f.engine.connect() as c:
                assert c.execute(sa.select(Job.state, Job.attempts).where(Job.id == job)).one() == ("running", 1)
            # a second worker whose clock says the dead one's last heartbeat is older than job_dead_after_s
            stale = Worker(f.settings, db.make_sessionmaker(f.engine), worker_id="rescuer",
                           clock=lambda: _utcnow() + timedelta(seconds=f.settings.job_dead_after_s + 1),
                           heartbeat_thread=False)
            assert stale.run_once() is None   # re-queued; the next attempt waits its backoff
            stale.clock = lambda: _utcnow() + timedelta(seconds=f.settings.job_dead_after_s + 1
                                                        + f.settings.job_retry_max_s)
            assert stale.run_once() == job
            with f.engine.connect() as c:
                state, attempts, result = c.execute(
                    sa.select(Job.state, Job.attempts, Job.result).where(Job.id == job)).one()
                n_aggregates = c.execute(
                    sa.select(sa.func.count()).select_from(Aggregate).where(Aggregate.round_id == rnd)
                ).scalar_one()
            assert (state, attempts) == ("succeeded", 2)
            assert result["n_devices"] == 3 and n_aggregates == 1
            logs = f.ok(f.client.get(f"/api/v1/jobs/{job}/logs", headers=f.admin))
            assert any("stopped heartbeating" in x["message"] for x in logs), logs
        finally:
            f.client.close()
            f.engine.dispose()


def _utcnow() -> Any:
    from server.tables import utcnow

    return utcnow()


# --- the agent's state dir: full, then read-only ----------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and a kernel that lets us mount; skipped otherwise: the same failures
    are simulated in tests/unit/test_agent_state.py with SQLite's max_page_count / query_only)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); simulated in unit tests")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path: Path) -> Path:
    """Fill the file system holding ``path`` to the last byte."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (65536, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def test_agent_state_dir_full_then_read_only_loses_nothing(small_tmpfs: Path, tmp_path: Path) -> None:
    """The device's state dir fills up: queueing a new report fails with a clear error and keeps what was
    queued; a delivery whose receipt cannot be written fails clearly, the report stays pending, and once
    there is room again the re-send is answered with the stored receipt (exactly once). Then the mount
    goes read-only: the state still opens for reading, writes fail clearly, nothing is lost."""
    from arte.retry import RetryPolicy
    from arte.wire import DraftScoreMsg, Report
    from edge_agent.client import ServerClient
    from edge_agent.errors import StateError
    from edge_agent.state import State
    from edge_agent.sync import deliver, queue_report

    srv = Serve({}, tmp_path / "data").start()
    try:
        task = srv.admin("POST", "/tasks", {"name": "t", "instruction": "i"})["task_id"]
        cohort = srv.admin("POST", "/cohorts", {"name": "c", "task_id": task, "student_model": "default",
                                                "profile_class": "laptop-cpu", "min_devices": 1})["cohort_id"]
        r1, r2 = (srv.admin("POST", "/rounds", {"cohort_id": cohort, "drafts": DRAFTS})["round_id"]
                  for _ in range(2))
        [box] = enroll_agents(srv, cohort, 1, small_tmpfs)
        scores = [DraftScoreMsg(f"d{j}", 10.0, 3.0) for j in range(N_DRAFTS)]
        client = ServerClient(srv.url, box.key, retry=RetryPolicy(attempts=2), wait=lambda s: None)
        with State(box.dir) as st:
            queue_report(st, r1, Report(idempotency_key=f"{r1}:x", scores=scores, mode="cot-choice"))
            filler = _fill(small_tmpfs)
            with pytest.raises(StateError, match="disk is full|disk I/O") as full:
                queue_report(st, r2, Report(idempotency_key=f"{r2}:x", scores=scores, mode="cot-choice"))
            assert str(box.dir) in str(full.value)
            assert [i.idempotency_key for i in st.pending()][0] == f"{r1}:x"
            with pytest.raises(StateError, match="disk is full|disk I/O"):
                deliver(st, client)  # the server stores it; the receipt cannot be written
            assert stored_reports(f"sqlite:///{tmp_path / 'data' / 'arte.db'}") != {}
            assert f"{r1}:x" in [i.idempotency_key for i in st.pending()]
            filler.unlink()
            d = deliver(st, client)
            assert d.pending == 0 and d.delivered[0]["duplicate"] is True
        client.close()
        stored = stored_reports(f"sqlite:///{tmp_path / 'data' / 'arte.db'}")
        assert len(stored) == 1 and list(stored.values())[0][1] == N_DRAFTS

        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
        with State(box.dir) as st:
            assert st.read_only
            assert st.outbox(f"{r1}:x").status == "delivered"
            with pytest.raises(StateError, match="read-only"):
                queue_report(st, r2, Report(idempotency_key=f"{r2}:x", scores=scores, mode="cot-choice"))
            assert st.outbox_counts() == {"delivered": 1}
    finally:
        srv.stop()
