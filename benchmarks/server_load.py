"""Can the fleet server hold a fleet's load? N simulated agents against `arte-server serve --workers W`.

What: N agents (no model) on loopback, each with its own device key and one keep-alive connection, run
the device protocol as a real agent does: pull a round's drafts (64 drafts), post the round's report
(64 per-draft counts, idempotency key), and every few rounds pull the newest dataset manifest and
download its JSONL content; a small share of reports is re-sent (a lost receipt) and must come back as
the stored duplicate. Real HTTP/1.1, real auth, real databases (SQLite WAL; PostgreSQL in a fresh
schema). Two phases per configuration:

* ``closed``: every agent sends its next request as soon as the previous one is answered, for
  ``--duration`` seconds or ``--max-reports`` reports: the most the server can do (reports/s);
* ``paced``: the same agents offered ``--paced-fraction`` of that rate (open loop, fixed schedule per
  agent), so the latencies (p50/p99) are those of a server that keeps up, not of a queue.

Afterwards the database itself is counted: every report the server answered 200 ``duplicate=false`` must
be stored exactly once with its 64 scores, and nothing else may be stored.

Why this generator: 500 agents in one asyncio loop (uvloop when installed) over raw keep-alive sockets
costs a few tens of microseconds of CPU per request, several times less than an HTTP client library
would; its CPU time is measured (``gen cpu/req``) next to the server's (``srv cpu/req``, the uvicorn
processes) and PostgreSQL's backends (``pg cpu/req``), so the figures say what the server itself costs
even on a machine shared with other work. The baseline in the same run is ``GET /health`` (HTTP stack and
generator, no database, no auth) at the same concurrency. Load averages are recorded before and after.

    python benchmarks/server_load.py [--agents 500] [--workers 1,2] [--backends sqlite,postgresql]
        [--postgres throwaway|URL] [--duration 20] [--max-reports 20000] [--drafts 64]

Where the paced phase's tail comes from: the server runs with ``ARTE_SERVER_DEBUG_TIMINGS`` (``--timings
off`` for the server as deployed) and each report's answer says how long it spent in each phase
(``server.timings``: in-flight slot, body, group-commit queue, thread hand-off, write lock, statements,
COMMIT, wake-up, and the GC and event-loop lateness that overlapped it); the slowest 1% are averaged per
phase, and each API process's GC, event-loop and commit counters and its loop-thread/worker-thread CPU
are read after each phase. With 2+ cores the generator is pinned to the first core and the API processes
to the others (``--pin off`` to share). ``ceiling_ratio``: the closed phase's requests/s over the
``/health`` baseline's.

Loopback only; every phase is bounded in time and count. Prints a table, then one line of JSON (last
line) with the numbers, versions and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sqlite3

import sqlalchemy as sa
from _env import machine_info, versions

from benchmarks.pg_cluster import pg_bin, pg_cluster
from server import db
from server.tables import Report, ReportScore

ROOT = Path(__file__).resolve().parents[1]
API = "/api/v1"
HOST = "127.0.0.1"


# --- a minimal HTTP/1.1 keep-alive client (one connection per agent) ---------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length (uvicorn's do)."""

    def __init__(self, port: int, key: str | None = None) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.timing: bytes | None = None  # the last response's X-Arte-Timing (server.timings), if any

    async def request(
        self, method: str, path: str, body: bytes | None = None, extra: bytes = b""
    ) -> tuple[int, bytes]:
        for attempt in (0, 1):  # one reconnect: the server may close an idle keep-alive connection
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
            head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n".encode() + self.auth + extra
            if body is not None:
                head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
            try:
                self.writer.write(head + b"\r\n" + (body or b""))
                assert self.reader is not None
                status_headers = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
                continue
            lines = status_headers.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = 0
            close = False
            self.timing = None
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
                elif name == b"x-arte-timing":
                    self.timing = value.strip()
                elif name == b"transfer-encoding":
                    raise RuntimeError("chunked responses are not expected from this server")
            data = await self.reader.readexactly(length) if length else b""
            if close:
                await self.close()
            return status, data
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except ConnectionError:
                pass
        self.reader = self.writer = None


# --- the server under test --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo.extend(children.get(q, []))
    return out


class Server:
    """`arte-server init` + `arte-server serve --workers W` in its own process group."""

    def __init__(self, env: dict[str, str], workers: int, cpus: set[int] | None = None) -> None:
        self.env = env
        exe = [sys.executable, "-m", "server.cli", "--log-level", "WARNING"]
        out = subprocess.run([*exe, "init", "--json"], env=env, capture_output=True, text=True, check=True)
        self.admin_key = json.loads(out.stdout)["admin_key"]
        self.port = free_port()
        self.workers = workers
        self.log = open(Path(env["ARTE_SERVER_DATA_DIR"]) / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [*exe, "serve", "--port", str(self.port), "--workers", str(workers), "--no-access-log"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.cpus = cpus
        self.pin()

    def pin(self) -> None:
        """Keep the API processes on their cores (again once they are up: workers start later)."""
        if self.cpus:
            for pid in descendants(self.proc.pid):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(pid, self.cpus)

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        conn = Conn(self.port)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}")
            try:
                if (await conn.request("GET", f"{API}/health"))[0] == 200:
                    await conn.close()
                    self.pin()
                    return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError("server did not come up")

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p) for p in descendants(self.proc.pid))

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


# --- the fleet -------------------------------------------------------------------------------------------


@dataclass
class Fleet:
    rounds: list[str]
    keys: list[str]
    device_ids: list[str]
    dataset_id: str
    dataset_size: int


async def admin_json(conn: Conn, method: str, path: str, body: Any = None, status: int = 201) -> Any:
    code, data = await conn.request(method, f"{API}{path}", json.dumps(body).encode() if body is not None else None)
    if code != status:
        raise RuntimeError(f"{method} {path}: {code} {data[:300]!r}")
    return json.loads(data)


async def build_fleet(srv: Server, n_agents: int, n_rounds: int, n_drafts: int) -> Fleet:
    admin = Conn(srv.port, srv.admin_key)
    task = (await admin_json(admin, "POST", "/tasks", {"name": "load", "instruction": "Plausible?"}))["task_id"]
    cohort = (
        await admin_json(
            admin,
            "POST",
            "/cohorts",
            {"name": "load", "task_id": task, "student_model": "default", "profile_class": "p",
             "min_devices": 1},
        )
    )["cohort_id"]
    drafts = [
        {"id": f"draft-{i:03d}", "question": f"Is sentence {i} plausible? " + "x" * 120,
         "rationale": "Think about the sport. " + "y" * 300 + " <ans>yes</ans>", "answer": "yes"}
        for i in range(n_drafts)
    ]
    rounds = [
        (await admin_json(admin, "POST", "/rounds", {"cohort_id": cohort, "drafts": drafts,
                                                    "mode": "loglik"}))["round_id"]
        for _ in range(n_rounds)
    ]
    # a tailored dataset of a realistic size: ~400 examples, ~100 KB of JSONL
    content = "".join(
        json.dumps({"input": f"Question {i}: " + "q" * 80, "target": "yes" if i % 2 else "no",
                    "rationale": "r" * 120}) + "\n"
        for i in range(400)
    )
    ds = await admin_json(admin, "POST", "/datasets", {"cohort_id": cohort, "content": content, "teacher": "t"})
    tokens = [(await admin_json(admin, "POST", "/tokens", {"cohort_id": cohort}))["token"] for _ in range(n_agents)]
    await admin.close()

    async def enroll(i: int) -> tuple[str, str]:
        c = Conn(srv.port)
        r = await admin_json(
            c, "POST", "/enroll", {"token": tokens[i], "device_name": f"agent{i}", "profile_id": "p"}
        )
        await c.close()
        return r["device_key"], r["device_id"]

    sem = asyncio.Semaphore(64)

    async def bounded(i: int) -> tuple[str, str]:
        async with sem:
            return await enroll(i)

    pairs = await asyncio.gather(*(bounded(i) for i in range(n_agents)))
    return Fleet(rounds, [k for k, _ in pairs], [d for _, d in pairs], ds["dataset_id"], ds["size"])


# --- the agents ------------------------------------------------------------------------------------------


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    accepted: dict[tuple[str, str], str] = field(default_factory=dict)  # (device, round) -> report id
    duplicates_ok: int = 0
    duplicates_bad: int = 0
    transport_errors: int = 0
    reports: int = 0
    requests: int = 0
    timed: list[tuple[float, bytes]] = field(default_factory=list)  # (report latency, X-Arte-Timing)

    def note(self, kind: str, status: int, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        label = f"{kind} {status}"
        self.statuses[label] = self.statuses.get(label, 0) + 1
        self.requests += 1


def report_body(device: int, round_id: str, n_drafts: int, rng: random.Random) -> bytes:
    scores = []
    for j in range(n_drafts):
        n = 40
        scores.append({"draft_id": f"draft-{j:03d}", "n_items": n, "n_correct": rng.randint(0, n)})
    return json.dumps(
        {"idempotency_key": f"{round_id}:{device}", "mode": "loglik", "scores": scores,
         "agent_version": "load/1"}, separators=(",", ":")
    ).encode()


async def agent(
    i: int, fleet: Fleet, port: int, stats: Stats, *, stop_at: float, max_reports: int, n_drafts: int,
    download_every: int, resend: float, interval_s: float | None, rounds: range,
) -> None:
    """One device: per round drafts + report (+ a re-send now and then), a dataset every few rounds."""
    conn = Conn(port, fleet.keys[i])
    rng = random.Random(i)
    loop = asyncio.get_running_loop()
    next_at = loop.time() + (rng.uniform(0, interval_s) if interval_s else 0.0)
    n = 0
    try:
        for r in rounds:
            if interval_s:
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval_s
            if loop.time() >= stop_at or stats.reports >= max_reports:
                return
            rid = fleet.rounds[r]
            t0 = time.perf_counter()
            code, _ = await conn.request("GET", f"{API}/rounds/{rid}/drafts")
            stats.note("drafts", code, time.perf_counter() - t0)
            body = report_body(i, rid, n_drafts, rng)
            sends = 2 if rng.random() < resend else 1
            for k in range(sends):
                t0 = time.perf_counter()
                code, data = await conn.request("POST", f"{API}/rounds/{rid}/reports", body)
                stats.note("report", code, time.perf_counter() - t0)
                if conn.timing:
                    stats.timed.append((stats.latencies["report"][-1], conn.timing))
                if code != 200:
                    continue
                receipt = json.loads(data)
                if receipt["duplicate"]:
                    ok = stats.accepted.get((fleet.device_ids[i], rid)) == receipt["report_id"]
                    stats.duplicates_ok += ok
                    stats.duplicates_bad += not ok
                else:
                    if (fleet.device_ids[i], rid) in stats.accepted:
                        stats.duplicates_bad += 1
                    stats.accepted[(fleet.device_ids[i], rid)] = receipt["report_id"]
                    stats.reports += 1
            n += 1
            if download_every and n % download_every == 0:
                t0 = time.perf_counter()
                code, _ = await conn.request("GET", f"{API}/datasets/latest")
                stats.note("manifest", code, time.perf_counter() - t0)
                t0 = time.perf_counter()
                code, data = await conn.request("GET", f"{API}/datasets/{fleet.dataset_id}/content")
                stats.note("download", code, time.perf_counter() - t0)
                if code == 200 and len(data) != fleet.dataset_size:
                    raise RuntimeError("short dataset download")
    except (OSError, asyncio.IncompleteReadError):
        stats.transport_errors += 1
    finally:
        await conn.close()


async def health_agent(port: int, stats: Stats, stop_at: float) -> None:
    conn = Conn(port)
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < stop_at:
            t0 = time.perf_counter()
            code, _ = await conn.request("GET", f"{API}/health")
            stats.note("health", code, time.perf_counter() - t0)
    except (OSError, asyncio.IncompleteReadError):
        stats.transport_errors += 1
    finally:
        await conn.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# the phases of a report in the server (server.timings), in order, then what overlapped them
PHASES = ("outside", "adm", "body", "wq", "hop", "lock", "db", "commit", "wake", "rest")
OVERLAPS = ("gc", "blk")


def breakdown(timed: list[tuple[float, bytes]]) -> dict[str, Any] | None:
    """Where the reports' time went: per phase the median, the p99, and the mean over the slowest 1%
    of reports (the tail: what makes the p99), in ms. ``outside``: the client's latency minus the time
    in the app (kernel and uvicorn queues, the generator's own delay in reading the answer); ``rest``:
    the time in the app outside the named phases (the response, the middleware)."""
    if not timed:
        return None
    rows = []
    for latency, raw in timed:
        d = {k.decode(): int(v) / (1 if k == b"n" else 1e3)
             for k, v in (kv.split(b"=") for kv in raw.split(b","))}
        d["outside"] = latency * 1e3 - d["srv"]
        d["rest"] = d["srv"] - sum(d.get(k, 0.0) for k in PHASES[1:-1])
        d["latency"] = latency * 1e3
        rows.append(d)
    rows.sort(key=lambda d: d["latency"])
    tail = rows[min(len(rows) - 1, math.ceil(0.99 * len(rows)) - 1):]
    keys = ("latency", "srv", *PHASES, *OVERLAPS, "n")
    return {
        "reports": len(rows),
        "tail_reports": len(tail),
        "tail_mean_ms": {k: round(sum(d.get(k, 0.0) for d in tail) / len(tail), 2) for k in keys},
        "p50_ms": {k: round(pct([d.get(k, 0.0) for d in rows], 0.5), 2) for k in keys},
        "p99_ms": {k: round(pct([d.get(k, 0.0) for d in rows], 0.99), 2) for k in keys},
    }


async def server_counters(port: int, workers: int, reset: bool) -> list[dict[str, Any]]:
    """Each API process's GC, event-loop and commit counters (``GET /debug/timings``; a worker is
    reached by chance per connection, so a few tries), zeroed after reading when ``reset``."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(8 * workers):
        conn = Conn(port)
        try:
            code, data = await conn.request("GET", f"{API}/debug/timings" + ("?reset=1" if reset else ""))
        finally:
            await conn.close()
        if code != 200:
            return []
        d = json.loads(data)
        seen.setdefault(d["pid"], d)
        if len(seen) == workers:
            break
    return list(seen.values())


# --- PostgreSQL backends' CPU ----------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants, plus its children that already exited."""
    total = 0.0
    for p in descendants(pid):
        total += proc_cpu_s(p)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime
    except OSError:
        pass
    return total


class PgCpu:
    """CPU seconds PostgreSQL spent for this benchmark: the whole cluster (postmaster, backends, exited
    backends, background writers) when it is the benchmark's own throwaway cluster; otherwise the live
    backends connected with application_name ``arte-load`` (backends that exit mid-phase are missed)."""

    def __init__(self, url: str | None, app_name: str, postmaster: int | None = None) -> None:
        self.url, self.app_name, self.postmaster = url, app_name, postmaster
        self.start: dict[int, float] = {}
        self.start_tree = 0.0

    def _pids(self) -> list[int]:
        if not self.url:
            return []

        eng = sa.create_engine(self.url)
        with eng.connect() as c:
            pids = list(c.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :a"),
                                  {"a": self.app_name}).scalars())
        eng.dispose()
        return pids

    def begin(self) -> None:
        if self.postmaster:
            self.start_tree = tree_cpu_s(self.postmaster)
        else:
            self.start = {p: proc_cpu_s(p) for p in self._pids()}

    def seconds(self) -> float | None:
        if not self.url:
            return None
        if self.postmaster:
            return tree_cpu_s(self.postmaster) - self.start_tree
        return sum(proc_cpu_s(p) - self.start.get(p, 0.0) for p in self._pids())


# --- one configuration -----------------------------------------------------------------------------------


async def phase(
    name: str, srv: Server, fleet: Fleet, args: argparse.Namespace, pg: PgCpu, rounds: range,
    rate: float | None,
) -> dict[str, Any]:
    stats = Stats()
    loop = asyncio.get_running_loop()
    interval = args.agents / rate if rate else None
    load0 = os.getloadavg()[0]
    await server_counters(srv.port, srv.workers, reset=True)
    pg.begin()
    srv0, gen0, t0 = srv.cpu_s(), time.process_time(), time.perf_counter()
    stop_at = loop.time() + args.duration
    await asyncio.gather(
        *(agent(i, fleet, srv.port, stats, stop_at=stop_at, max_reports=args.max_reports, n_drafts=args.drafts,
                download_every=args.download_every, resend=args.resend, interval_s=interval,
                rounds=rounds)
          for i in range(args.agents))
    )
    wall = time.perf_counter() - t0
    srv_cpu, gen_cpu, pg_cpu = srv.cpu_s() - srv0, time.process_time() - gen0, pg.seconds()
    rep = stats.latencies.get("report", [])
    counters = await server_counters(srv.port, srv.workers, reset=False)
    errors = {k: v for k, v in stats.statuses.items() if not k.endswith((" 200", " 201", " 206"))}
    return {
        "phase": name,
        "offered_reports_per_s": rate,
        "seconds": round(wall, 2),
        "reports": stats.reports,
        "reports_per_s": round(stats.reports / wall, 1),
        "requests_per_s": round(stats.requests / wall, 1),
        "report_p50_ms": round(pct(rep, 0.50) * 1e3, 1),
        "report_p99_ms": round(pct(rep, 0.99) * 1e3, 1),
        "all_p99_ms": round(pct([x for v in stats.latencies.values() for x in v], 0.99) * 1e3, 1),
        "p99_ms_by_kind": {k: round(pct(v, 0.99) * 1e3, 1) for k, v in stats.latencies.items()},
        "errors": errors,
        "transport_errors": stats.transport_errors,
        "duplicates_ok": stats.duplicates_ok,
        "duplicates_bad": stats.duplicates_bad,
        "gen_cpu_ms_per_request": round(gen_cpu / max(1, stats.requests) * 1e3, 3),
        "server_cpu_ms_per_report": round(srv_cpu / max(1, stats.reports) * 1e3, 2),
        "server_cpu_ms_per_request": round(srv_cpu / max(1, stats.requests) * 1e3, 3),
        "pg_cpu_ms_per_report": round(pg_cpu / max(1, stats.reports) * 1e3, 2) if pg_cpu is not None else None,
        "server_cpu_s": round(srv_cpu, 2),
        "gen_cpu_s": round(gen_cpu, 2),
        "pg_cpu_s": round(pg_cpu, 2) if pg_cpu is not None else None,
        "breakdown": breakdown(stats.timed),
        "server_counters": counters,
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "_accepted": stats.accepted,
    }


async def baseline(srv: Server, args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    loop = asyncio.get_running_loop()
    srv0, gen0, t0 = srv.cpu_s(), time.process_time(), time.perf_counter()
    stop_at = loop.time() + args.baseline_duration
    await asyncio.gather(*(health_agent(srv.port, stats, stop_at) for _ in range(args.agents)))
    wall = time.perf_counter() - t0
    lat = stats.latencies.get("health", [])
    return {
        "requests_per_s": round(stats.requests / wall, 1),
        "p50_ms": round(pct(lat, 0.5) * 1e3, 1),
        "p99_ms": round(pct(lat, 0.99) * 1e3, 1),
        "gen_cpu_ms_per_request": round((time.process_time() - gen0) / max(1, stats.requests) * 1e3, 3),
        "server_cpu_ms_per_request": round((srv.cpu_s() - srv0) / max(1, stats.requests) * 1e3, 3),
    }


def count_stored(env: dict[str, str], pg_url: str | None, n_drafts: int) -> dict[str, Any]:
    """What the database holds for the benchmark's rounds (read directly, not through the API)."""

    url = pg_url or f"sqlite:///{Path(env['ARTE_SERVER_DATA_DIR']) / 'arte.db'}"
    eng = db.make_engine(url, schema=env.get("ARTE_SERVER_DB_SCHEMA"))
    with eng.connect() as c:
        rows = c.execute(sa.select(Report.id, Report.device_id, Report.round_id)).all()
        n_scores = c.execute(sa.select(sa.func.count()).select_from(ReportScore)).scalar_one()
        bad_scores = c.execute(
            sa.select(sa.func.count()).select_from(
                sa.select(ReportScore.report_id).group_by(ReportScore.report_id)
                .having(sa.func.count() != n_drafts).subquery()
            )
        ).scalar_one()
    eng.dispose()
    return {"rows": {(d, r): i for i, d, r in rows}, "n_rows": len(rows), "n_scores": n_scores,
            "reports_with_wrong_score_count": bad_scores}


async def run_config(backend: str, workers: int, env: dict[str, str], args: argparse.Namespace,
                     pg_url: str | None, postmaster: int | None) -> dict[str, Any]:
    srv = Server(env, workers, args.server_cpus)
    try:
        await srv.wait_ready()
        # each phase has rounds of its own (a report of the closed phase re-sent in the paced one would be
        # a duplicate the paced phase never accepted), twice the mean number per agent: agents are uneven
        per_agent = 2 * math.ceil(args.max_reports / args.agents) + 2
        fleet = await build_fleet(srv, args.agents, 2 * per_agent, args.drafts)
        pg = PgCpu(pg_url, "arte-load", postmaster)
        base = await baseline(srv, args)
        closed = await phase("closed", srv, fleet, args, pg, range(per_agent), None)
        if not closed["reports"]:  # a paced phase at ~0/s would sleep for minutes
            raise RuntimeError(f"the closed phase stored no report: {closed['errors']}")
        rate = max(1.0, closed["reports_per_s"] * args.paced_fraction)
        paced = await phase("paced", srv, fleet, args, pg, range(per_agent, 2 * per_agent), rate)
        stored = count_stored(env, pg_url, args.drafts)
        accepted = {**closed.pop("_accepted"), **paced.pop("_accepted")}
        exact = stored["rows"] == accepted
        return {
            "backend": backend,
            "workers": workers,
            "agents": args.agents,
            "baseline_health": base,
            # what the report cycle leaves of the HTTP stack's own rate (no-op /health, same run)
            "ceiling_ratio": round(closed["requests_per_s"] / base["requests_per_s"], 3),
            "closed": closed,
            "paced": paced,
            "accepted_reports": len(accepted),
            "stored_reports": stored["n_rows"],
            "stored_scores": stored["n_scores"],
            "reports_with_wrong_score_count": stored["reports_with_wrong_score_count"],
            "stored_exactly_once": bool(exact and stored["n_scores"] == len(accepted) * args.drafts
                                        and stored["reports_with_wrong_score_count"] == 0),
            "lost": len(set(accepted) - set(stored["rows"])),
            "unacknowledged_stored": len(set(stored["rows"]) - set(accepted)),
        }
    finally:
        srv.stop()


@contextlib.contextmanager
def postgres(choice: str) -> Any:
    """(SQLAlchemy URL, postmaster pid or None) of the PostgreSQL to measure on (see ``--postgres``)."""
    if choice != "throwaway":
        yield choice, None
        return
    if pg_bin() is None:
        yield os.environ.get("ARTE_TEST_POSTGRES_URL"), None
        return
    with pg_cluster(shared_buffers="128MB") as cluster:  # PostgreSQL's own default
        pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        yield cluster.url, pid


def print_breakdown(r: dict[str, Any]) -> None:
    """The paced phase's report latency by phase (ms): the slowest 1% on average, and each phase's p50/p99."""
    bd = r["paced"]["breakdown"]
    if bd is None:
        return
    cols = ("latency", *PHASES, *OVERLAPS, "n")
    print(f"{'':<13} paced report ms  " + " ".join(f"{c:>7}" for c in cols))
    for label, key in (("slowest 1% mean", "tail_mean_ms"), ("p50", "p50_ms"), ("p99", "p99_ms")):
        print(f"{'':<13} {label:<16} " + " ".join(f"{bd[key][c]:>7.1f}" for c in cols))
    for ph, c in [(name, c) for name in ("closed", "paced") for c in r[name]["server_counters"]]:
        print(f"{'':<13} server pid {c['pid']} ({ph}): CPU {c['cpu_s']} s (event loop {c['loop_thread_cpu_s']}, "
              f"threads {c['other_threads_cpu_s']}), GC {c['gc_ms']} ms (max {c['gc_max_ms']}, by gen "
              f"{c['gc_collections_by_generation']}), loop blocked {c['loop_blocked_ms']} ms (max lag "
              f"{c['loop_lag_max_ms']}, {c['loop_lags_over_10ms']} over 10 ms), {c['batches']} commits of "
              f"{c['mean_batch']} reports, commit mean {c['commit_mean_ms']} / max {c['commit_max_ms']} ms")


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backend and worker count: the ceiling ratio and the paced p99 with where its time went."""
    return [
        {
            "backend": r["backend"],
            "workers": r["workers"],
            "ceiling_ratio": r["ceiling_ratio"],
            "health_requests_per_s": r["baseline_health"]["requests_per_s"],
            "closed_requests_per_s": r["closed"]["requests_per_s"],
            "closed_reports_per_s": r["closed"]["reports_per_s"],
            "paced_reports_per_s": r["paced"]["reports_per_s"],
            "report_p99_ms": r["paced"]["report_p99_ms"],
            "report_p99_breakdown_ms": (r["paced"]["breakdown"] or {}).get("tail_mean_ms"),
            "lost": r["lost"],
            "stored_exactly_once": r["stored_exactly_once"],
        }
        for r in results
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=500, help="simulated agents (one connection each)")
    ap.add_argument("--workers", default="1,2", help="uvicorn worker counts to measure, comma-separated")
    ap.add_argument("--backends", default="sqlite,postgresql", help="sqlite and/or postgresql")
    ap.add_argument("--postgres", default="throwaway",
                    help="'throwaway' (default): a PostgreSQL cluster of our own in a temp dir (initdb + pg_ctl, "
                         "fsync on), so its CPU is measured whole and no shared database is disturbed; or a "
                         "SQLAlchemy URL (a fresh schema in it; default when no server binaries: "
                         "$ARTE_TEST_POSTGRES_URL)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase (upper bound)")
    ap.add_argument("--baseline-duration", type=float, default=4.0, help="seconds of the /health baseline")
    ap.add_argument("--max-reports", type=int, default=20_000, help="reports per phase (upper bound)")
    ap.add_argument("--drafts", type=int, default=64, help="drafts per round (scores per report)")
    ap.add_argument("--download-every", type=int, default=8, help="dataset download every N rounds (0: never)")
    ap.add_argument("--resend", type=float, default=0.02, help="share of reports sent twice (lost receipt)")
    ap.add_argument("--paced-fraction", type=float, default=0.6,
                    help="the paced phase offers this share of the closed phase's reports/s")
    ap.add_argument("--keep-dir", default=None, help="state dir to use and keep (server log: serve.log)")
    ap.add_argument("--pin", choices=("auto", "off"), default="auto",
                    help="auto: with 2+ cores, the generator on the first core and the API processes on the "
                         "others (os.sched_setaffinity; the throwaway PostgreSQL stays on all cores)")
    ap.add_argument("--timings", choices=("on", "off"), default="on",
                    help="on: the server's per-phase timings (ARTE_SERVER_DEBUG_TIMINGS, server.timings) for "
                         "the breakdown; off: the server exactly as deployed")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    args.gen_cpus = {cpus[0]} if args.pin == "auto" and len(cpus) >= 2 else None
    args.server_cpus = set(cpus[1:]) if args.gen_cpus else None
    try:
        import uvloop  # optional: not on Windows

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"

    base = {k: v for k, v in os.environ.items() if not k.startswith("ARTE_SERVER_")}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])
    # the limiter stays on (its cost is part of every request) but high enough for admin set-up bursts
    base["ARTE_SERVER_RATE_LIMIT_PER_S"] = "1000"
    base["ARTE_SERVER_RATE_LIMIT_BURST"] = "2000"
    base["ARTE_SERVER_DEBUG_TIMINGS"] = "true" if args.timings == "on" else "false"
    results: list[dict[str, Any]] = []
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    with contextlib.ExitStack() as stack:
        pg_url, postmaster = None, None
        if "postgresql" in backends:
            pg_url, postmaster = stack.enter_context(postgres(args.postgres))
        if args.gen_cpus:  # after PostgreSQL started: its processes keep every core
            os.sched_setaffinity(0, args.gen_cpus)
        for backend in backends:
            if backend == "postgresql" and not pg_url:
                print("postgresql: no server binaries and no URL (--postgres, ARTE_TEST_POSTGRES_URL); skipped",
                      file=sys.stderr)
                continue
            for workers in [int(w) for w in args.workers.split(",")]:
                with tempfile.TemporaryDirectory() as tmp:
                    env = {**base, "ARTE_SERVER_DATA_DIR": args.keep_dir or tmp}
                    schema = None
                    if backend == "postgresql":

                        schema = f"arte_load_{secrets.token_hex(4)}"
                        db.create_schema(pg_url, schema)
                        sep = "&" if "?" in pg_url else "?"
                        env["ARTE_SERVER_DATABASE_URL"] = f"{pg_url}{sep}application_name=arte-load"
                        env["ARTE_SERVER_DB_SCHEMA"] = schema
                    try:
                        print(f"{backend} workers={workers} ...", file=sys.stderr, flush=True)
                        results.append(asyncio.run(run_config(
                            backend, workers, env, args, pg_url if backend == "postgresql" else None,
                            postmaster if backend == "postgresql" else None)))
                    finally:
                        if schema:
                            db.drop_schema(pg_url, schema)
        pg_version = None
        if pg_url:

            eng = sa.create_engine(pg_url)
            with eng.connect() as c:
                pg_version = c.execute(sa.text("SHOW server_version")).scalar_one()
            eng.dispose()

    hdr = (f"{'backend':<10} {'W':>2} {'phase':<6} {'reports/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'all p99':>7} "
           f"{'errors':>6} {'srv cpu/rep':>11} {'pg cpu/rep':>10} {'gen cpu/req':>11} {'load1m':>11}")
    print(hdr)
    for r in results:
        for ph in ("closed", "paced"):
            p = r[ph]
            n_err = sum(p["errors"].values()) + p["transport_errors"]
            pgc = f"{p['pg_cpu_ms_per_report']:.2f}ms" if p["pg_cpu_ms_per_report"] is not None else "-"
            print(f"{r['backend']:<10} {r['workers']:>2} {ph:<6} {p['reports_per_s']:>9.1f} {p['report_p50_ms']:>7.1f} "
                  f"{p['report_p99_ms']:>7.1f} {p['all_p99_ms']:>7.1f} {n_err:>6} "
                  f"{p['server_cpu_ms_per_report']:>9.2f}ms {pgc:>10} {p['gen_cpu_ms_per_request']:>9.3f}ms "
                  f"{p['loadavg_1m'][0]:>5.2f}-{p['loadavg_1m'][1]:<5.2f}")
        b = r["baseline_health"]
        print(f"{'':<10} {'':>2} health baseline: {b['requests_per_s']:.0f} req/s, p99 {b['p99_ms']:.1f} ms, "
              f"server {b['server_cpu_ms_per_request']:.3f} ms CPU/req, generator {b['gen_cpu_ms_per_request']:.3f}")
        print(f"{'':<10} {'':>2} accepted {r['accepted_reports']}, stored {r['stored_reports']} "
              f"({r['stored_scores']} scores), lost {r['lost']}, exactly once: {r['stored_exactly_once']}")
        print(f"{'':<10} {'':>2} ceiling_ratio {r['ceiling_ratio']:.2f} (closed req/s / health req/s); CPU s "
              f"closed/paced: server {r['closed']['server_cpu_s']}/{r['paced']['server_cpu_s']}, generator "
              f"{r['closed']['gen_cpu_s']}/{r['paced']['gen_cpu_s']}")
        print_breakdown(r)
    print(f"({args.agents} agents, {args.drafts} drafts/report, dataset every {args.download_every} rounds, "
          f"{args.resend:.0%} re-sent; loop {loop_name}; loopback; machine shared: see load1m)")
    vers = versions(["fastapi", "starlette", "uvicorn", "uvloop", "httptools", "SQLAlchemy", "psycopg",
                     "pydantic"])

    vers["sqlite"] = sqlite3.sqlite_version
    if pg_version:
        vers["postgresql"] = pg_version
    print(json.dumps({
        "benchmark": "server_load",
        "agents": args.agents,
        "drafts_per_report": args.drafts,
        "duration_s": args.duration,
        "generator_loop": loop_name,
        "pinned": {"generator": sorted(args.gen_cpus or []), "server": sorted(args.server_cpus or [])},
        "summary": summary(results),
        "results": results,
        "versions": vers,
        "machine": machine_info(),
    }, default=str))


if __name__ == "__main__":
    main()
