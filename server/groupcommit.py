"""Group commit of device reports: the reports that arrive while one transaction is being written are
authenticated and stored together in the next one.

Contract. ``await writer.submit(report)`` takes a report whose body is valid and whose key was rate
limited (:mod:`server.device_fast_path`) and answers what the route would answer for it after that: 401
``unknown or revoked key``, or what :func:`server.report_store.submit_report` gives (the receipt or the
same :class:`~server.errors.ApiError`), only after the transaction that holds the report has
committed (no receipt for a report that is not stored). The key is checked in that transaction, as the
route checks it in its own, and the device's last contact is recorded as the route records it (once a
minute, only by a request that succeeds).

Per event loop ``writers`` transactions are written at a time (1; on PostgreSQL 2 would let one batch's
statements run while the other's commit waits for its fsync, but measured no better on 2 cores: same
reports/s within the machine's noise, a little more CPU per report; several API processes write
concurrently anyway): while they are, new reports queue, and the next transaction takes up to
``max_batch`` of them, in arrival order, through
:func:`server.report_store.store_reports`, which gives each the outcome it would have had alone. Under
load a commit, its round trips and (PostgreSQL) its fsync are shared by many reports; on an idle server a
report is written at once, alone (nothing lingers). When the transaction fails: if the database is
unavailable, every report of the batch gets that error (503 ``database_unavailable``: nothing was
stored, agents re-send); on any other error each report of the batch is written again alone in its own
transaction, so one bad report costs only itself (it gets its own error: a 500, logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from arte import wire
from server import timings
from server.db import core_transaction, is_sqlite
from server.deps import device_key_valid, unknown_key
from server.errors import ApiError
from server.keycache import LAST_SEEN_GRANULARITY, DeviceKeyCache, KnownDevice
from server.report_store import Outcome, ReportRequest, store_reports
from server.schemas import ReportIn
from server.tables import Device

__all__ = ["PendingReport", "ReportWriter"]

logger = logging.getLogger(__name__)

_DEVICES = sa.select(
    Device.id, Device.cohort_id, Device.key_hash, Device.revoked_at, Device.last_seen_at
).where(Device.id.in_(sa.bindparam("ids", expanding=True)))
_TOUCH = (
    sa.update(Device.__table__)
    .where(Device.__table__.c.id == sa.bindparam("device"))
    .values(last_seen_at=sa.bindparam("seen"))
)


@dataclass(frozen=True)
class PendingReport:
    """A report with a valid body, from the bearer of the key ``arte_dk_<device>_<secret>``."""

    device_id: str
    secret: str
    round_id: str
    body: ReportIn
    now: datetime
    timing: dict[str, float] | None = field(default=None, compare=False)  # server.timings (when on)


@dataclass
class _Queue:
    """One event loop's reports waiting for a transaction, and the tasks writing them."""

    waiting: list[tuple[PendingReport, asyncio.Future[wire.ReportReceipt]]] = field(default_factory=list)
    writing: set[asyncio.Task[None]] = field(default_factory=set)


class ReportWriter:
    """Writes one app's reports (see the module docstring); ``keys`` learns the devices it reads."""

    def __init__(
        self,
        engine: Engine,
        keys: DeviceKeyCache,
        max_batch: int = 64,
        checkpoint_every_s: float = 0.25,
        writers: int = 1,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.max_batch = max_batch
        self.writers = writers
        # SQLite: the WAL is checkpointed beside the writes, not by the commit that fills it (see _checkpoint)
        self.checkpoint_every_s = checkpoint_every_s if is_sqlite(engine) else 0.0
        self._checkpoint_due = time.monotonic() + self.checkpoint_every_s
        self._checkpointing: asyncio.Future[tuple[int, int, int]] | None = None
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, report: PendingReport) -> wire.ReportReceipt:
        """The report's receipt once its transaction committed; raises what the route would."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        answer: asyncio.Future[wire.ReportReceipt] = loop.create_future()
        queue.waiting.append((report, answer))
        if len(queue.writing) < self.writers:
            task = loop.create_task(self._write_queued(queue))
            queue.writing.add(task)
            task.add_done_callback(queue.writing.discard)
        return await answer

    async def _write_queued(self, queue: _Queue) -> None:
        try:
            while queue.waiting:
                batch = queue.waiting[: self.max_batch]
                del queue.waiting[: self.max_batch]
                for report, _ in batch:
                    timings.mark(report.timing, "taken")
                try:
                    outcomes = await run_in_threadpool(self.write, [report for report, _ in batch])
                except BaseException as e:  # cancelled at shutdown: nobody may wait forever
                    for _, answer in batch + queue.waiting:
                        if not answer.done():
                            answer.set_exception(e)
                    queue.waiting.clear()
                    raise
                for (_, answer), outcome in zip(batch, outcomes):
                    if answer.done():  # the request was cancelled (client gone): its report still counts
                        continue
                    if isinstance(outcome, BaseException):
                        answer.set_exception(outcome)
                    else:
                        answer.set_result(outcome)
                self._maybe_checkpoint()
        finally:
            queue.writing.discard(asyncio.current_task())  # type: ignore[arg-type]

    def _maybe_checkpoint(self) -> None:
        """On SQLite, start a checkpoint in a worker thread when one is due and none runs; nobody waits
        for it (the next batch is written meanwhile: a PASSIVE checkpoint blocks no writer)."""
        if not self.checkpoint_every_s or self._checkpointing is not None:
            return
        now = time.monotonic()
        if now < self._checkpoint_due:
            return
        self._checkpoint_due = now + self.checkpoint_every_s
        self._checkpointing = asyncio.ensure_future(run_in_threadpool(self._checkpoint))
        self._checkpointing.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future[tuple[int, int, int]]) -> None:
        self._checkpointing = None
        if not done.cancelled() and done.exception() is not None:
            logger.warning("WAL checkpoint failed: %r", done.exception())

    def _checkpoint(self) -> tuple[int, int, int]:
        """``PRAGMA wal_checkpoint(PASSIVE)`` outside any transaction: copies the committed pages into the
        database file (and syncs it) as far as readers allow, without the write lock. Without it the
        commit that grows the WAL past ``wal_autocheckpoint`` pages does this itself, with its reports
        waiting (measured: commits of up to 25 ms against 0.4 ms typical). Returns SQLite's answer: (busy,
        pages in the WAL, pages checkpointed)."""
        raw = self.engine.raw_connection()
        try:
            return tuple(raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())  # type: ignore[return-value]
        finally:
            raw.close()

    def write(self, reports: Sequence[PendingReport]) -> list[Outcome | BaseException]:
        """Store ``reports`` in one transaction (called in a worker thread): each one's outcome, in order."""
        try:
            return self._write_batch(reports)
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as e:
            return [e] * len(reports)  # nothing was stored: each request answers 503 and is re-sent
        except Exception as e:
            if len(reports) == 1:
                return [e]
            logger.warning("a batch of %d reports failed (%r); writing each alone", len(reports), e)
            return [self.write([report])[0] for report in reports]

    def _write_batch(self, reports: Sequence[PendingReport]) -> list[Outcome | BaseException]:
        outcomes: list[Outcome | BaseException] = [unknown_key() for _ in reports]
        marks: dict[str, float] = {}
        timed = reports[0].timing is not None
        if timed:
            marks["thread"] = time.perf_counter()
        with core_transaction(self.engine) as conn:
            if timed:
                marks["begun"] = time.perf_counter()
            ids = {r.device_id for r in reports}
            devices = {d.id: d for d in conn.execute(_DEVICES, {"ids": list(ids)})}
            valid = [i for i, r in enumerate(reports) if device_key_valid(devices.get(r.device_id), r.secret)]
            requests = [
                ReportRequest(r.device_id, devices[r.device_id].cohort_id, r.round_id, r.body, r.now)
                for r in (reports[i] for i in valid)
            ]
            seen = {d.id: d.last_seen_at for d in devices.values()}
            touched = []
            for i, outcome in zip(valid, store_reports(conn, requests)):
                outcomes[i] = outcome
                r = reports[i]
                if isinstance(outcome, ApiError):
                    continue
                last = seen[r.device_id]
                if last is None or r.now - last >= LAST_SEEN_GRANULARITY:  # as the route: once a minute
                    seen[r.device_id] = r.now
                    touched.append({"device": r.device_id, "seen": r.now})
            if touched:  # in device order, as the reports' rows (see store_reports)
                conn.execute(_TOUCH, sorted(touched, key=lambda t: t["device"]))
            if timed:
                marks["stmts"] = time.perf_counter()
        if timed:
            _stamp_batch(reports, marks)
        # committed: the devices whose keys were valid may read on the fast path for a while
        for i in valid:
            r, d = reports[i], devices[reports[i].device_id]
            self.keys.remember(KnownDevice(d.id, d.cohort_id, d.key_hash, seen[d.id], r.now))
        for device_id in ids:
            if device_id not in devices or devices[device_id].revoked_at is not None:
                self.keys.forget(device_id)
        return outcomes


def _stamp_batch(reports: Sequence[PendingReport], marks: dict[str, float]) -> None:
    """Give each report of a committed batch the batch's phase stamps (:mod:`server.timings`)."""
    marks["committed"] = time.perf_counter()
    marks["n"] = len(reports)
    for r in reports:
        if r.timing is not None:
            r.timing.update(marks)
    timings.STATS.batch(len(reports), marks["committed"] - marks["stmts"])
