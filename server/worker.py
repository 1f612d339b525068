"""The job worker: re-queue jobs of dead workers, claim one, run its handler while heartbeating, record
the outcome. ``arte-server worker`` runs :meth:`Worker.run_forever`; tests call :meth:`Worker.run_once`
with an injected clock, so nothing waits on wall time.

Every worker also drives the campaigns (:func:`server.driver.tick`): ``run_once`` ticks before it claims,
and ``run_forever`` ticks every ``campaign_tick_s`` in a thread of its own, so the campaigns move while a
long job runs. A failed attempt that may be retried waits a backoff (``job_retry_base_s`` doubling up
to ``job_retry_max_s``, with jitter) before another worker may claim it.

Outcomes: the handler's result → ``succeeded``; :class:`JobError` → failed (re-queued when it says
``retry`` and attempts remain); :class:`JobCancelled` → ``cancelled`` (or nothing, when the job was taken
away); any other exception is a bug or an environment problem (out of memory, a missing file) → logged
with its traceback and retried while attempts remain.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import traceback
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from server import driver, queue
from server.errors import JobError
from server.job_handlers import JobCancelled, JobContext, run_handler
from server.settings import ServerSettings
from server.tables import utcnow

__all__ = ["Worker"]

logger = logging.getLogger(__name__)


class Worker:
    """One worker process (or thread): claims and runs jobs one at a time."""

    def __init__(
        self,
        settings: ServerSettings,
        sessions: sessionmaker[Session],
        *,
        worker_id: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        heartbeat_thread: bool = True,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.clock = clock
        self.heartbeat_thread = heartbeat_thread
        self.jitter = jitter
        self.backoff = queue.Backoff(settings.job_retry_base_s, settings.job_retry_max_s, jitter)

    def drive(self) -> list[str]:
        """Advance the campaigns (:func:`server.driver.tick`); a failing tick is logged and tried again at
        the next one."""
        try:
            return driver.tick(self.sessions, self.settings, self.clock(), self.jitter)
        except Exception:  # noqa: BLE001 - e.g. the database briefly unreachable: the next tick retries
            logger.exception("campaign tick failed")
            return []

    def run_once(self, *, drive: bool = True) -> str | None:
        """Drive the campaigns (unless ``drive`` is False), re-queue dead jobs, claim one and run it;
        returns its id, or None when no job could be claimed."""
        if drive:
            self.drive()
        dead = queue.requeue_dead(self.sessions, self.clock(), self.settings.job_dead_after_s, self.backoff)
        for job_id in dead:
            logger.warning("job %s: its worker stopped heartbeating", job_id)
        claim = queue.claim(self.sessions, self.worker_id, self.clock())
        if claim is None:
            return None
        self.run(claim)
        return claim.job_id

    def run(self, claim: queue.Claim) -> str:
        """Run one claimed attempt to its outcome; returns the job's new state (or ``"lost"``)."""
        ctx = JobContext(claim=claim, settings=self.settings, sessions=self.sessions, clock=self.clock)
        stop = threading.Event()
        beat = None
        if self.heartbeat_thread:
            beat = threading.Thread(
                target=self._beat, args=(ctx, stop), daemon=True, name=f"heartbeat-{claim.job_id}"
            )
            beat.start()
        logger.info("job %s (%s) attempt %d started", claim.job_id, claim.kind, claim.attempt)
        try:
            result = run_handler(ctx)
        except JobCancelled as e:
            if e.reason == "cancel":
                queue.mark_cancelled(self.sessions, claim, self.clock())
                return "cancelled"
            return "lost"
        except JobError as e:
            return queue.fail(self.sessions, claim, str(e), self.clock(), retry=e.retry, backoff=self.backoff)
        except Exception as e:  # noqa: BLE001 - the one place that turns a crash into a failed attempt
            logger.exception("job %s crashed", claim.job_id)
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            return queue.fail(
                self.sessions, claim, f"{type(e).__name__}: {e}\n{text}", self.clock(), retry=True,
                backoff=self.backoff,
            )
        finally:
            stop.set()
            if beat is not None:
                beat.join()
        return "succeeded" if queue.succeed(self.sessions, claim, result, self.clock()) else "lost"

    def _beat(self, ctx: JobContext, stop: threading.Event) -> None:
        while not stop.wait(self.settings.job_heartbeat_s):
            try:
                status = queue.heartbeat(self.sessions, ctx.claim, self.clock())
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried at the next tick
                logger.exception("heartbeat of job %s failed", ctx.claim.job_id)
                continue
            if status != "ok":
                ctx.stop_reason = status
                for child in ctx.children:
                    child.terminate()
                return

    def run_forever(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; waits ``worker_poll_s`` between empty polls; drives the campaigns
        every ``campaign_tick_s`` in a thread."""
        logger.info("worker %s started", self.worker_id)
        ticker = threading.Thread(target=self._drive_loop, args=(stop,), daemon=True, name="campaign-driver")
        ticker.start()
        try:
            while not stop.is_set():
                if self.run_once(drive=False) is None:
                    stop.wait(self.settings.worker_poll_s)
        finally:
            stop.set()
            ticker.join()

    def _drive_loop(self, stop: threading.Event) -> None:
        while True:
            self.drive()
            if stop.wait(self.settings.campaign_tick_s):
                return
