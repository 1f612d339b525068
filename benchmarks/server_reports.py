"""How many device reports per second does the fleet server store, on SQLite and on PostgreSQL?

A quick loopback measurement (not the full load benchmark): the server runs as `arte-server serve` (one
uvicorn process) on 127.0.0.1; enrolled devices POST one report each per round (20 draft scores, the
shape of a real round) from a pool of concurrent httpx clients. Re-sends of the same reports (idempotent
duplicates) and two baselines are measured in the same run against the same server: GET /health (HTTP
stack only, no database) and GET /devices/me (key check + one row read). Client and server share the
machine's cores, so the numbers are a floor for this hardware, not a capacity figure.

    python benchmarks/server_reports.py [--postgres URL] [--devices 60] [--rounds 4] [--concurrency 8]

Prints a table, then one line of JSON (last line) with the numbers, versions and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fastapi
import httpx
import psycopg
import sqlalchemy
import uvicorn
from sqlalchemy import create_engine, text

from server import db

API = "/api/v1"
N_DRAFTS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        exe = [sys.executable, "-m", "server.cli", "--log-level", "WARNING"]
        init = subprocess.run([*exe, "init", "--json"], env=env, capture_output=True, text=True, check=True)
        self.admin_key = json.loads(init.stdout)["admin_key"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*exe, "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}{API}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def timed(n: int, concurrency: int, fn: Any) -> tuple[float, list[int]]:
    """Run fn(i) for i < n on a thread pool; returns (requests per second, status codes)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(fn, range(n)))
    return n / (time.perf_counter() - t0), codes


def measure(env: dict[str, str], devices: int, rounds: int, concurrency: int) -> dict[str, float]:
    srv = Server(env)
    try:
        admin = httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_key}"}, timeout=30
        )
        task = admin.post(f"{API}/tasks", json={"name": "bench", "instruction": "Answer."}).json()["task_id"]
        cohort = admin.post(
            f"{API}/cohorts",
            json={
                "name": "bench",
                "task_id": task,
                "student_model": "m",
                "profile_class": "p",
                "min_devices": 1,
            },
        ).json()["cohort_id"]
        drafts = [
            {"id": f"d{i}", "question": "q", "rationale": "r <ans>a</ans>", "answer": "a"}
            for i in range(N_DRAFTS)
        ]
        round_ids = [
            admin.post(f"{API}/rounds", json={"cohort_id": cohort, "drafts": drafts}).json()["round_id"]
            for _ in range(rounds)
        ]
        keys = []
        for i in range(devices):
            token = admin.post(f"{API}/tokens", json={"cohort_id": cohort}).json()["token"]
            r = httpx.post(
                f"{srv.url}{API}/enroll", json={"token": token, "device_name": f"d{i}", "profile_id": "p"}
            )
            keys.append(r.json()["device_key"])
        clients = [
            httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {k}"}, timeout=30) for k in keys
        ]
        jobs = [(c, rid) for rid in round_ids for c in range(devices)]

        def report(i: int) -> int:
            c, rid = jobs[i]
            body = {
                "idempotency_key": f"{rid}-{c}",
                "mode": "loglik",
                "scores": [
                    {"draft_id": f"d{j}", "n_items": 40, "n_correct": (j * 7 + c) % 41}
                    for j in range(N_DRAFTS)
                ],
            }
            return clients[c].post(f"{API}/rounds/{rid}/reports", json=body).status_code

        health_rate, hc = timed(
            len(jobs), concurrency, lambda i: clients[i % devices].get(f"{API}/health").status_code
        )
        me_rate, mc = timed(
            len(jobs), concurrency, lambda i: clients[i % devices].get(f"{API}/devices/me").status_code
        )
        report_rate, rc = timed(len(jobs), concurrency, report)
        dup_rate, dc = timed(len(jobs), concurrency, report)
        assert set(hc) == {200} and set(mc) == {200} and set(rc) == {200} and set(dc) == {200}, (
            set(hc),
            set(mc),
            set(rc),
            set(dc),
        )
        agg = admin.get(f"{API}/aggregates/{round_ids[0]}").json()
        assert agg["n_devices"] == devices
        for c in clients:
            c.close()
        return {
            "n_reports": len(jobs),
            "reports_per_s": report_rate,
            "duplicate_reports_per_s": dup_rate,
            "health_per_s": health_rate,
            "devices_me_per_s": me_rate,
        }
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--postgres",
        default=os.environ.get("ARTE_TEST_POSTGRES_URL"),
        help="PostgreSQL SQLAlchemy URL (default: $ARTE_TEST_POSTGRES_URL; none: SQLite only)",
    )
    ap.add_argument("--devices", type=int, default=60, help="enrolled devices")
    ap.add_argument("--rounds", type=int, default=4, help="rounds (each device reports once per round)")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent client threads")
    args = ap.parse_args()

    base = {k: v for k, v in os.environ.items() if not k.startswith("ARTE_SERVER_")}
    base["ARTE_SERVER_RATE_LIMIT_PER_S"] = "0"
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure(
            {**base, "ARTE_SERVER_DATA_DIR": tmp}, args.devices, args.rounds, args.concurrency
        )
    if args.postgres:

        schema = f"arte_bench_{secrets.token_hex(4)}"
        db.create_schema(args.postgres, schema)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                results["postgresql"] = measure(
                    {
                        **base,
                        "ARTE_SERVER_DATA_DIR": tmp,
                        "ARTE_SERVER_DATABASE_URL": args.postgres,
                        "ARTE_SERVER_DB_SCHEMA": schema,
                    },
                    args.devices,
                    args.rounds,
                    args.concurrency,
                )
        finally:
            db.drop_schema(args.postgres, schema)

    print(
        f"{'backend':<11} {'reports/s':>10} {'dup re-sends/s':>15} {'GET /devices/me/s':>18} "
        f"{'GET /health/s (baseline)':>25}"
    )
    for name, r in results.items():
        print(
            f"{name:<11} {r['reports_per_s']:>10.1f} {r['duplicate_reports_per_s']:>15.1f} "
            f"{r['devices_me_per_s']:>18.1f} {r['health_per_s']:>25.1f}"
        )
    print(
        f"({args.devices} devices x {args.rounds} rounds = {args.devices * args.rounds} reports of "
        f"{N_DRAFTS} scores each, {args.concurrency} concurrent clients, one uvicorn process, loopback)"
    )

    versions = {
        "python": platform.python_version(),
        "fastapi": fastapi.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__,
    }
    versions["psycopg"] = psycopg.__version__
    if "postgresql" in results:

        eng = create_engine(args.postgres)
        with eng.connect() as c:
            versions["postgresql"] = c.execute(text("SHOW server_version")).scalar_one()
        eng.dispose()

    versions["sqlite"] = sqlite3.sqlite_version
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}
    print(
        json.dumps(
            {
                "benchmark": "server_reports",
                "devices": args.devices,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "drafts_per_report": N_DRAFTS,
                "results": results,
                "versions": versions,
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
