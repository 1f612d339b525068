"""The job queue, in the database: create, claim, heartbeat, finish, fail, retry, cancel, log.

States: ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``; a running job goes back to
``queued`` when its attempt fails with a retryable error or its worker stops heartbeating, until
``max_attempts`` attempts were made; it waits ``not_before`` first (:func:`retry_delay`: exponential backoff
with jitter, so an out-of-memory attempt is not repeated back to back). Claiming is atomic: on PostgreSQL ``SELECT ... FOR UPDATE SKIP
LOCKED`` lets many workers claim different jobs without waiting on each other; on SQLite the claim runs
in a ``BEGIN IMMEDIATE`` transaction (:func:`server.db.transaction`), which serializes claimers. Every
state change after the claim is guarded by ``worker_id`` and ``attempts`` so a worker that was presumed
dead (and whose job was re-queued and claimed again) cannot overwrite the new attempt's outcome.

Kinds in :data:`COHORT_LOCKED` (``align``, ``tailor``: they read and write the cohort's adapter) run one at
a time per cohort: a queued one is passed over while another of its cohort is running. The running job is
the lock, so a dead worker's lock ends when :func:`requeue_dead` re-queues its job. On PostgreSQL the
claimer first locks the cohort's row, so two workers cannot both see the cohort free.

Every failed job carries its reason in ``error``.

Every function runs in its own short transaction on the given session factory and takes ``now`` (tests
drive time by hand; nothing sleeps).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from server import aggregates, fleet
from server.db import transaction
from server.errors import BadRequest, BelowK, Conflict, NotFound
from server.schemas import JobIn, JobLogOut, JobOut
from server.tables import Cohort, Job, JobLog, new_id

__all__ = [
    "Claim",
    "submit",
    "create_job",
    "get_job",
    "list_jobs",
    "claim",
    "heartbeat",
    "succeed",
    "fail",
    "cancel",
    "requeue_dead",
    "log",
    "job_logs",
    "job_out",
    "retry_delay",
    "Backoff",
    "TERMINAL",
    "COHORT_LOCKED",
]

TERMINAL = ("succeeded", "failed", "cancelled")
COHORT_LOCKED = ("align", "tailor")
_CANDIDATES = 64   # queued jobs a claim looks at (the oldest first) when the first ones must wait


def retry_delay(attempt: int, base_s: float, max_s: float, jitter: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``base_s * 2**(attempt-1)`` capped at
    ``max_s``, times a factor in [0.5, 1) from ``jitter`` in [0, 1) (so workers that failed together do
    not retry together)."""
    exp = min(max_s, base_s * 2.0 ** min(max(attempt - 1, 0), 60))
    return exp * (0.5 + 0.5 * jitter)


@dataclass(frozen=True)
class Backoff:
    """How long a failed job waits before its next attempt (see :func:`retry_delay`)."""

    base_s: float = 0.0
    max_s: float = 0.0
    jitter: Callable[[], float] = random.random

    def not_before(self, attempt: int, now: datetime) -> tuple[datetime | None, float]:
        delay = retry_delay(attempt, self.base_s, self.max_s, self.jitter())
        return (now + timedelta(seconds=delay) if delay > 0 else None), delay


@dataclass(frozen=True)
class Claim:
    """What a worker holds while running one attempt of a job."""

    job_id: str
    kind: str
    cohort_id: str | None
    round_id: str | None
    params: dict[str, Any]
    attempt: int
    worker_id: str


def create_job(
    s: Session,
    *,
    kind: str,
    cohort_id: str | None,
    round_id: str | None,
    params: dict[str, Any],
    max_attempts: int,
    now: datetime,
    campaign_id: str | None = None,
    key: str | None = None,
) -> Job:
    job = Job(
        id=new_id("job"),
        kind=kind,
        cohort_id=cohort_id,
        round_id=round_id,
        params=params,
        state="queued",
        attempts=0,
        max_attempts=max_attempts,
        worker_id=None,
        progress=None,
        result=None,
        error=None,
        cancel_requested=False,
        created_at=now,
        campaign_id=campaign_id,
        key=key,
    )
    s.add(job)
    s.flush()
    return job


def submit(s: Session, body: JobIn, now: datetime, default_max_attempts: int) -> Job:
    """Queue a job after checking what can be checked now: the cohort, the round (``aggregate`` and
    ``align`` need one of the cohort), and for ``align`` that at least k devices reported."""
    fleet.get_cohort(s, body.cohort_id)
    if body.round_id is not None:
        rnd = fleet.get_round(s, body.round_id)
        if rnd.cohort_id != body.cohort_id:
            raise BadRequest(f"round {rnd.id} is not a round of cohort {body.cohort_id}", field="round_id")
    elif body.kind in ("aggregate", "align"):
        raise BadRequest(f"a {body.kind} job needs a round_id", field="round_id")
    if body.kind == "align":
        agg = aggregates.compute_aggregate(s, rnd)
        if not agg.may_align:  # arte.privacy.cohort_threshold
            raise BelowK(
                f"round {rnd.id}: {agg.reason}; the cohort needs k={agg.min_devices} distinct devices "
                "(on at least one draft) before its scores may drive alignment",
                field="round_id",
                n_devices=agg.n_devices,
                min_devices=agg.min_devices,
            )
    return create_job(
        s,
        kind=body.kind,
        cohort_id=body.cohort_id,
        round_id=body.round_id,
        params=body.params,
        max_attempts=body.max_attempts or default_max_attempts,
        now=now,
    )


def get_job(s: Session, job_id: str) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}", field="job_id", job_id=job_id)
    return job


def list_jobs(
    s: Session, *, state: str | None = None, kind: str | None = None, cohort_id: str | None = None
) -> list[Job]:
    q = sa.select(Job).order_by(Job.created_at, Job.id)
    if state:
        q = q.where(Job.state == state)
    if kind:
        q = q.where(Job.kind == kind)
    if cohort_id:
        q = q.where(Job.cohort_id == cohort_id)
    return list(s.scalars(q))


def _log(s: Session, job_id: str, attempt: int, level: str, message: str, now: datetime) -> None:
    s.add(JobLog(job_id=job_id, attempt=attempt, at=now, level=level, message=message[:20_000]))


def log(
    sessions: sessionmaker[Session], claim: Claim, message: str, now: datetime, level: str = "info"
) -> None:
    """Append a log line to the claimed job's current attempt."""
    with transaction(sessions) as s:
        _log(s, claim.job_id, claim.attempt, level, message, now)


def _cohort_busy(s: Session, job: Job) -> bool:
    """Whether another job of ``COHORT_LOCKED`` runs for the job's cohort (the cohort row is locked first:
    on PostgreSQL a second claimer waits here and then sees the first one's committed claim)."""
    s.execute(sa.select(Cohort.id).where(Cohort.id == job.cohort_id).with_for_update(key_share=True))
    running = s.scalar(
        sa.select(Job.id)
        .where(Job.cohort_id == job.cohort_id, Job.state == "running", Job.kind.in_(COHORT_LOCKED))
        .limit(1)
    )
    return running is not None


def claim(
    sessions: sessionmaker[Session], worker_id: str, now: datetime, kinds: tuple[str, ...] | None = None
) -> Claim | None:
    """Atomically take the oldest queued job (of ``kinds``) whose ``not_before`` has passed and whose
    cohort lock is free, or None when there is none."""
    with transaction(sessions) as s:
        q = (
            sa.select(Job.id)
            .where(Job.state == "queued", sa.or_(Job.not_before.is_(None), Job.not_before <= now))
            .order_by(Job.created_at, Job.id)
            .limit(_CANDIDATES)
        )
        if kinds:
            q = q.where(Job.kind.in_(kinds))
        for job_id in list(s.scalars(q)):
            job = s.scalar(
                sa.select(Job).where(Job.id == job_id, Job.state == "queued").with_for_update(skip_locked=True)
            )
            if job is None or (job.kind in COHORT_LOCKED and job.cohort_id and _cohort_busy(s, job)):
                continue
            return _take(s, job, worker_id, now)
        return None


def _take(s: Session, job: Job, worker_id: str, now: datetime) -> Claim:
    job.state, job.worker_id = "running", worker_id
    job.attempts += 1
    job.started_at = job.heartbeat_at = now
    job.progress = None
    _log(
        s,
        job.id,
        job.attempts,
        "info",
        f"attempt {job.attempts}/{job.max_attempts} claimed by {worker_id}",
        now,
    )
    return Claim(
        job_id=job.id,
        kind=job.kind,
        cohort_id=job.cohort_id,
        round_id=job.round_id,
        params=dict(job.params),
        attempt=job.attempts,
        worker_id=worker_id,
    )


def _owned(s: Session, c: Claim) -> Job | None:
    """The job row locked, if this claim still owns it (running, same worker, same attempt)."""
    job = s.scalar(sa.select(Job).where(Job.id == c.job_id).with_for_update())
    if job is None or job.state != "running" or job.worker_id != c.worker_id or job.attempts != c.attempt:
        return None
    return job


def heartbeat(sessions: sessionmaker[Session], c: Claim, now: datetime, progress: float | None = None) -> str:
    """Record that the worker is alive: ``"ok"``, ``"cancel"`` (stop: a cancel was requested) or
    ``"lost"`` (stop: the job was re-queued or finished by someone else)."""
    with transaction(sessions) as s:
        job = _owned(s, c)
        if job is None:
            return "lost"
        job.heartbeat_at = now
        if progress is not None:
            job.progress = max(0.0, min(1.0, progress))
        return "cancel" if job.cancel_requested else "ok"


def succeed(sessions: sessionmaker[Session], c: Claim, result: dict[str, Any], now: datetime) -> bool:
    """Mark the attempt succeeded; False when the claim no longer owns the job."""
    with transaction(sessions) as s:
        job = _owned(s, c)
        if job is None:
            return False
        job.state, job.result, job.error, job.finished_at, job.progress = "succeeded", result, None, now, 1.0
        _log(s, job.id, c.attempt, "info", "succeeded", now)
        return True


def _requeue(job: Job, now: datetime, backoff: Backoff) -> str:
    job.state, job.worker_id = "queued", None
    job.not_before, delay = backoff.not_before(job.attempts, now)
    return f"; attempt {job.attempts + 1} not before {job.not_before.isoformat()} ({delay:.0f} s)" \
        if job.not_before else ""


def fail(
    sessions: sessionmaker[Session],
    c: Claim,
    error: str,
    now: datetime,
    *,
    retry: bool,
    backoff: Backoff = Backoff(),
) -> str:
    """End the attempt with ``error`` (kept as the job's reason); re-queue when ``retry`` and attempts
    remain, not before the backoff's delay. Returns the new state (or ``"lost"``)."""
    with transaction(sessions) as s:
        job = _owned(s, c)
        if job is None:
            return "lost"
        _log(s, job.id, c.attempt, "error", error, now)
        job.error = error or "failed without a message"
        if job.cancel_requested:
            job.state, job.finished_at = "cancelled", now
        elif retry and job.attempts < job.max_attempts:
            _log(s, job.id, c.attempt, "info", "re-queued" + _requeue(job, now, backoff), now)
        else:
            job.state, job.finished_at = "failed", now
        return job.state


def mark_cancelled(sessions: sessionmaker[Session], c: Claim, now: datetime) -> bool:
    """The worker stopped the attempt because a cancel was requested."""
    with transaction(sessions) as s:
        job = _owned(s, c)
        if job is None:
            return False
        job.state, job.finished_at = "cancelled", now
        _log(s, job.id, c.attempt, "info", "cancelled while running", now)
        return True


def cancel(s: Session, job_id: str, now: datetime) -> Job:
    """Cancel a job: a queued job at once; a running one is asked to stop (its worker sees it at the next
    heartbeat). Cancelling a finished job is a conflict."""
    job = s.scalar(sa.select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise NotFound(f"no job {job_id}", field="job_id", job_id=job_id)
    if job.state in TERMINAL:
        raise Conflict(f"job {job_id} is already {job.state}", field="job_id", state=job.state)
    job.cancel_requested = True
    if job.state == "queued":
        job.state, job.finished_at = "cancelled", now
        _log(s, job.id, job.attempts, "info", "cancelled while queued", now)
    s.flush()
    return job


def requeue_dead(
    sessions: sessionmaker[Session], now: datetime, dead_after_s: float, backoff: Backoff = Backoff()
) -> list[str]:
    """Re-queue running jobs whose heartbeat is older than ``dead_after_s`` (their worker died; the next
    attempt waits the backoff, as after a failure), or fail them when no attempts remain. Returns the
    ids handled."""
    cutoff = now - timedelta(seconds=dead_after_s)
    handled = []
    with transaction(sessions) as s:
        q = (
            sa.select(Job)
            .where(Job.state == "running", Job.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        )
        for job in s.scalars(q):
            msg = f"worker {job.worker_id} stopped heartbeating (last {job.heartbeat_at.isoformat()})"  # type: ignore[union-attr]
            if job.cancel_requested:
                job.state, job.finished_at = "cancelled", now
            elif job.attempts < job.max_attempts:
                job.error = msg
                msg += "; re-queued" + _requeue(job, now, backoff)
            else:
                job.state, job.finished_at, job.error = "failed", now, msg + "; no attempts left"
            _log(s, job.id, job.attempts, "warning", msg, now)
            handled.append(job.id)
    return handled


def job_logs(s: Session, job_id: str) -> list[JobLogOut]:
    get_job(s, job_id)
    rows = s.scalars(sa.select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id))
    return [JobLogOut(attempt=r.attempt, at=r.at, level=r.level, message=r.message) for r in rows]


def job_out(j: Job) -> JobOut:
    return JobOut(
        job_id=j.id,
        kind=j.kind,
        cohort_id=j.cohort_id,
        round_id=j.round_id,
        params=j.params,
        state=j.state,
        attempts=j.attempts,
        max_attempts=j.max_attempts,  # type: ignore[arg-type]
        worker_id=j.worker_id,
        progress=j.progress,
        result=j.result,
        error=j.error,
        cancel_requested=j.cancel_requested,
        created_at=j.created_at,
        started_at=j.started_at,
        heartbeat_at=j.heartbeat_at,
        finished_at=j.finished_at,
        not_before=j.not_before,
        campaign_id=j.campaign_id,
    )
