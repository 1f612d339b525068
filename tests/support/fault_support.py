"""Helpers for the fault tests: `arte-server serve` as a killable process group, a throwaway PostgreSQL
cluster (initdb + pg_ctl in a temp dir on a free port), a small tmpfs, and a fleet of agent state dirs
built with the real edge-agent code (State, outbox, ServerClient).

Nothing here sleeps on a fixed time: every wait polls for the condition it needs (the port answers,
pg_isready says yes, a count is reached) and fails after a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from benchmarks.pg_cluster import PgCluster, PgUnavailable, free_port
from benchmarks.pg_cluster import pg_cluster as throwaway_cluster

ROOT = Path(__file__).resolve().parents[2]
API = "/api/v1"


def poll(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Wait until ``condition()`` is true (each try yields the CPU briefly); AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.02)


class Serve:
    """`arte-server serve` in its own process group (so kill -9 takes its uvicorn workers too)."""

    def __init__(self, env: dict[str, str], data_dir: Path, workers: int = 1) -> None:
        self.env = {**os.environ, **env, "ARTE_SERVER_DATA_DIR": str(data_dir),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.env.setdefault("ARTE_SERVER_RATE_LIMIT_PER_S", "0")
        self.dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.exe = [sys.executable, "-m", "server.cli", "--log-level", "WARNING"]
        out = subprocess.run([*self.exe, "init", "--json"], env=self.env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        self.admin_key = json.loads(out.stdout)["admin_key"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Serve":
        log = (self.dir / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [*self.exe, "serve", "--port", str(self.port), "--workers", str(self.workers), "--no-access-log"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {(self.dir / 'serve.log').read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}{API}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        poll(up, "arte-server serve to answer", 120)
        return self

    def kill9(self) -> None:
        """SIGKILL the whole process group (uvicorn's supervisor and its workers) and reap it."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        poll(lambda: not _port_open(self.port), "the port to close", 30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def admin(self, method: str, path: str, body: Any = None, status: int = 201) -> Any:
        r = httpx.request(method, f"{self.url}{API}{path}", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {self.admin_key}"})
        assert r.status_code == status, r.text
        return r.json()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- a throwaway PostgreSQL cluster ---------------------------------------------------------------------


@contextmanager
def pg_cluster(shared_buffers: str = "32MB") -> Iterator[PgCluster]:
    """:func:`benchmarks.pg_cluster.pg_cluster`, skipping the test where PostgreSQL is not installed."""
    try:
        with throwaway_cluster(shared_buffers) as cluster:
            yield cluster
    except PgUnavailable as e:
        pytest.skip(str(e))


# --- agents: the real edge-agent state, outbox and client ---------------------------------------------


@dataclass
class AgentBox:
    """One enrolled device: its state dir (outbox) and device key. The agent's SQLite connection belongs
    to one thread, so each user opens the state dir itself (``State(box.dir)``)."""

    dir: Path
    device_id: str
    key: str


def enroll_agents(srv: Serve, cohort: str, n: int, root: Path) -> list[AgentBox]:
    from arte.wire import EnrollRequest
    from edge_agent.client import ServerClient
    from edge_agent.state import State

    agents = []
    for i in range(n):
        token = srv.admin("POST", "/tokens", {"cohort_id": cohort})["token"]
        with ServerClient(srv.url) as c:
            resp, _ = c.enroll(EnrollRequest(token=token, device_name=f"agent{i}", profile_id="laptop-cpu"))
        with State(root / f"agent{i}") as st:
            st.set(server_url=srv.url, device_id=resp.device_id, cohort_id=resp.cohort_id)
            st.write_device_key(resp.device_key)
        agents.append(AgentBox(root / f"agent{i}", resp.device_id, resp.device_key))
    return agents


def queue_reports(agents: list[AgentBox], rounds: list[str], n_drafts: int) -> int:
    """Put one report per (agent, round) in each agent's outbox; returns how many."""
    from arte.wire import DraftScoreMsg, Report
    from edge_agent.state import State
    from edge_agent.sync import queue_report

    n = 0
    for a in agents:
        with State(a.dir) as st:
            for r in rounds:
                scores = [DraftScoreMsg(f"d{j}", 10.0, float((j + n) % 11)) for j in range(n_drafts)]
                queue_report(st, r, Report(idempotency_key=f"{r}:{a.device_id}", scores=scores, mode="cot-choice"))
                n += 1
    return n


def deliver_all(agents: list[AgentBox], url: str, attempts: int = 3) -> list[Any]:
    """Every agent runs the real ``deliver`` once, concurrently (retries without waiting: the wait is
    injected). Returns the Delivery of each agent."""
    from arte.retry import RetryPolicy
    from edge_agent.client import ServerClient
    from edge_agent.state import State
    from edge_agent.sync import deliver

    out: list[Any] = [None] * len(agents)

    def run(i: int) -> None:
        with State(agents[i].dir) as st, ServerClient(
            url, agents[i].key, retry=RetryPolicy(attempts=attempts, base_delay=0.0), wait=lambda s: None,
            timeout=30,
        ) as c:
            try:
                out[i] = deliver(st, c)
            except Exception as e:  # noqa: BLE001 - reported to the test, which asserts on it
                out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def stored_reports(url: str, schema: str | None = None) -> dict[tuple[str, str], tuple[str, int]]:
    """(device, round) -> (report id, number of scores), read from the database itself."""
    import sqlalchemy as sa

    from server import db
    from server.tables import Report, ReportScore

    eng = db.make_engine(url, schema=schema)
    try:
        with eng.connect() as c:
            q = (sa.select(Report.device_id, Report.round_id, Report.id, sa.func.count(ReportScore.draft_id))
                 .join(ReportScore, ReportScore.report_id == Report.id, isouter=True)
                 .group_by(Report.device_id, Report.round_id, Report.id))
            rows = c.execute(q).all()
    finally:
        eng.dispose()
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for d, r, rid, n in rows:
        assert (d, r) not in out, f"two reports stored for device {d} round {r}"
        out[(d, r)] = (rid, n)
    return out


def count_reports(url: str, schema: str | None = None) -> int:
    import sqlalchemy as sa

    from server import db

    eng = db.make_engine(url, schema=schema)
    try:
        with eng.connect() as c:
            return int(c.execute(sa.text("SELECT count(*) FROM reports")).scalar_one())
    finally:
        eng.dispose()
