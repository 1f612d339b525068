"""Where a request's time goes, for load tests: off by default (``ARTE_SERVER_DEBUG_TIMINGS=true``).

When on, :class:`RequestTimings` (the outermost ASGI layer) gives every response an
``X-Arte-Timing`` header of ``name=microseconds`` pairs, and answers ``GET /api/v1/debug/timings`` with
this process's counters (``?reset=1`` zeroes them). The phases of a request, one after the other:

* ``adm``: from the request reaching the app to passing the in-flight cap (waiting for a slot);
* ``body``: reading and validating the body (device reports on the fast path);
* ``wq``: waiting in the group commit's queue for the transaction that takes the report;
* ``hop``: the hand-off to a worker thread; ``lock``: waiting for the write lock and BEGIN;
* ``db``: the transaction's statements; ``commit``: COMMIT itself (on SQLite with any WAL checkpoint);
* ``wake``: from the commit until the request's handler runs again on the event loop;
* ``srv``: the whole time in the app, up to the response's start.

And what overlapped it in this process: ``gc`` (time in the cyclic collector) and ``blk`` (the event
loop blocked: a 2 ms timer's lateness beyond 1 ms, summed), both cumulative counters differenced over
the request. ``n``: the reports in the request's transaction. The client's own latency minus ``srv`` is
what the app cannot see: the kernel's and uvicorn's queues before the app is called, and the network.

Cost when on: a few clock reads per request, one callback per collection, a 2 ms timer per event loop;
when off nothing is installed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
import weakref
from typing import Any

from arte.wire import API_PREFIX

__all__ = ["PATH", "STATS", "RequestTimings", "mark"]

PATH = f"{API_PREFIX}/debug/timings"
_SCOPE_KEY = "arte.timing"
_TICK_S = 0.002
_LATE_S = 0.001


class _Stats:
    """This process's counters: cyclic GC pauses, event-loop lateness, report phases."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loop_threads: set[int] = set()
        self.gc_started = 0.0
        self.installed = False
        self.reset()

    def reset(self) -> None:
        self.since = time.perf_counter()
        self.cpu0 = time.process_time()
        self.threads0 = _thread_cpu_s()
        self.gc_s = 0.0
        self.gc_max_s = 0.0
        self.gc_by_gen = [0, 0, 0]
        self.blocked_s = 0.0
        self.lag_max_s = 0.0
        self.lags_over_10ms = 0
        self.batches = 0
        self.batch_reports = 0
        self.commit_s = 0.0
        self.commit_max_s = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self.gc_started
        self.gc_s += took
        self.gc_max_s = max(self.gc_max_s, took)
        self.gc_by_gen[info.get("generation", 2)] += 1

    def install(self) -> None:
        if not self.installed:
            self.installed = True
            gc.callbacks.append(self._on_gc)

    def batch(self, n: int, commit_s: float) -> None:
        with self.lock:
            self.batches += 1
            self.batch_reports += n
            self.commit_s += commit_s
            self.commit_max_s = max(self.commit_max_s, commit_s)

    def snapshot(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.since
        threads = _thread_cpu_s()
        spent = {tid: cpu - self.threads0.get(tid, 0.0) for tid, cpu in threads.items()}
        loop_cpu = sum(cpu for tid, cpu in spent.items() if tid in self.loop_threads)
        return {
            "pid": os.getpid(),
            "seconds": round(wall, 3),
            "cpu_s": round(time.process_time() - self.cpu0, 3),
            # the event loop's thread (HTTP, middleware, the fast path) against the worker threads (the
            # routes, the group commit's transactions, checkpoints); Linux only (empty elsewhere)
            "loop_thread_cpu_s": round(loop_cpu, 3),
            "other_threads_cpu_s": round(sum(spent.values()) - loop_cpu, 3),
            "gc_ms": round(self.gc_s * 1e3, 1),
            "gc_max_ms": round(self.gc_max_s * 1e3, 2),
            "gc_collections_by_generation": list(self.gc_by_gen),
            "loop_blocked_ms": round(self.blocked_s * 1e3, 1),
            "loop_lag_max_ms": round(self.lag_max_s * 1e3, 2),
            "loop_lags_over_10ms": self.lags_over_10ms,
            "batches": self.batches,
            "mean_batch": round(self.batch_reports / self.batches, 2) if self.batches else None,
            "commit_mean_ms": round(self.commit_s / self.batches * 1e3, 2) if self.batches else None,
            "commit_max_ms": round(self.commit_max_s * 1e3, 2),
        }


def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds of each thread of this process, by native thread id (Linux /proc; else empty)."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


STATS = _Stats()


def mark(timing: dict[str, float] | None, name: str) -> None:
    """Stamp ``name`` now on a request's timing record (None: timings are off, nothing to do)."""
    if timing is not None:
        timing[name] = time.perf_counter()


def record(scope: dict[str, Any]) -> dict[str, float] | None:
    """The request's timing record, or None when timings are off."""
    return scope.get(_SCOPE_KEY)


async def _watch_loop() -> None:
    """Sum how late a short timer fires: the time the event loop was busy with something else."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(_TICK_S)
        late = time.perf_counter() - t - _TICK_S
        if late > _LATE_S:
            STATS.blocked_s += late
            STATS.lag_max_s = max(STATS.lag_max_s, late)
            STATS.lags_over_10ms += late > 0.010


# (start mark, end mark) -> phase name, in the order a fast-path report passes them
_PHASES = (
    ("in", "fast", "adm"),
    ("fast", "submit", "body"),
    ("submit", "taken", "wq"),
    ("taken", "thread", "hop"),
    ("thread", "begun", "lock"),
    ("begun", "stmts", "db"),
    ("stmts", "committed", "commit"),
    ("committed", "resumed", "wake"),
)


def _header(t: dict[str, float], now: float) -> bytes:
    parts = [f"srv={(now - t['in']) * 1e6:.0f}"]
    for start, end, name in _PHASES:
        if start in t and end in t:
            parts.append(f"{name}={(t[end] - t[start]) * 1e6:.0f}")
    parts.append(f"gc={(STATS.gc_s - t['gc0']) * 1e6:.0f}")
    parts.append(f"blk={(STATS.blocked_s - t['blk0']) * 1e6:.0f}")
    if "n" in t:
        parts.append(f"n={t['n']:.0f}")
    return ",".join(parts).encode()


class RequestTimings:
    """ASGI middleware (outermost) for the timings above; install only when they are on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )
        STATS.install()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        if loop not in self._watchers:
            self._watchers[loop] = loop.create_task(_watch_loop())
            STATS.loop_threads.add(threading.get_native_id())
        if scope["path"] == PATH and scope["method"] == "GET":
            await self._stats(scope, send)
            return
        t = scope[_SCOPE_KEY] = {"in": time.perf_counter(), "gc0": STATS.gc_s, "blk0": STATS.blocked_s}

        async def stamped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-arte-timing", _header(t, time.perf_counter())))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, stamped)

    async def _stats(self, scope: dict[str, Any], send: Any) -> None:
        body = json.dumps(STATS.snapshot()).encode()
        if b"reset=1" in scope.get("query_string", b""):
            STATS.reset()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
