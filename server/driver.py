"""The campaign driver: moves every active campaign forward, one transition at a time, with nobody at the
keyboard. Every ``arte-server worker`` runs :func:`tick` every ``campaign_tick_s`` (in a thread beside the
job it works on, so a long align does not hold the other campaigns back); ``Worker.run_once`` ticks too.

A round goes ``elicit → collect → aggregate → align → tailor`` and then the next round's ``elicit``:

* ``elicit``: queue an elicit job (the teacher, with the cohort's newest adapter unless the policy says
  otherwise, writes the drafts with the policy's seed + round − 1; the job opens the round); its success
  records the round and, with a deadline, sets the round's ``closes_at``;
* ``collect``: close the round when ``close_devices`` devices reported, when its deadline passed, or when
  an operator closed it;
* ``aggregate``: queue the aggregate job; it says whether the k threshold allows alignment: if not, the
  round skips ``align`` (recorded as ``below_k``);
* ``align``: queue the align job (DPO on the round's pairs; ``no_signal`` leaves the adapter as it is);
* ``tailor``: queue the tailor job (seed + round − 1): the cohort's dataset, published to the devices as
  soon as it is stored; then the stop rule, and the next round or ``completed``.

A job step has two transitions: queue the job, then take its outcome. Each transition is one transaction
that holds the campaign's row (``FOR UPDATE SKIP LOCKED``: on PostgreSQL several workers tick at once and
each campaign moves in one of them; on SQLite ``BEGIN IMMEDIATE`` serializes them), reads, writes, bumps
``version`` and appends the event of that version (unique). A process killed mid-transition leaves nothing
of it; one killed after the commit left a state the next tick continues from. Jobs are queued with the
unique key ``<campaign>:<version>``, and the handlers are idempotent per job (the round, the adapter and
the dataset carry the id of the job that wrote them), so a job attempt re-run after a worker died finds
its own output instead of making a second one. A step's job that fails (after its own attempts, each
after a backoff) is queued again after a backoff; ``max_failures`` failures in a row pause the campaign
with the reason, until an operator resumes it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from server import fleet, queue
from server.campaigns import record
from server.db import transaction
from server.errors import ApiError
from server.schemas import JOB_LIVE
from server.settings import ServerSettings
from server.tables import Campaign, CampaignRound, DeviceMetrics, Job, Report

__all__ = ["tick", "advance"]

logger = logging.getLogger(__name__)
_MAX_TRANSITIONS = 16   # per campaign per tick: a tick never spins on one campaign


def tick(
    sessions: sessionmaker[Session],
    settings: ServerSettings,
    now: datetime,
    jitter: Callable[[], float] = random.random,
) -> list[str]:
    """Advance every active campaign as far as it can go now; returns the events written."""
    with sessions() as s:   # a read: no write lock (SQLite) to find out that nothing is active
        ids = list(s.scalars(sa.select(Campaign.id).where(Campaign.state == "active")
                             .order_by(Campaign.created_at, Campaign.id)))
    events: list[str] = []
    for cid in ids:
        for _ in range(_MAX_TRANSITIONS):
            try:
                with transaction(sessions) as s:
                    c = s.scalar(sa.select(Campaign).where(Campaign.id == cid).with_for_update(skip_locked=True))
                    if c is None or c.state != "active":
                        break
                    event = advance(s, c, settings, now, jitter)
            except ApiError as e:   # the campaign's own data forbids the step: an operator must look
                logger.error("campaign %s: %s", cid, e.message)
                with transaction(sessions) as s:
                    c = s.get(Campaign, cid)
                    if c is not None and c.state == "active":
                        c.state, c.reason = "paused", f"round {c.round_no}, step {c.step}: {e.message}"
                        events.append(record(s, c, "paused", c.reason, now))
                break
            if event is None:
                break
            logger.info("campaign %s", event)
            events.append(event)
    return events


def advance(
    s: Session, c: Campaign, settings: ServerSettings, now: datetime, jitter: Callable[[], float] = random.random
) -> str | None:
    """One transition of an active campaign (in the caller's transaction, its row locked), or None when
    it must wait (a job in flight, a round still collecting)."""
    if c.step == "collect":
        return _collect(s, c, now)
    if c.job_id is None:
        return _queue_step(s, c, settings, now, jitter)
    job = s.get(Job, c.job_id)
    if job is not None and job.state in JOB_LIVE:
        return None
    if job is not None and job.state == "succeeded":
        return _succeeded(s, c, job, now)
    return _failed(s, c, job, now)


def _round_row(s: Session, c: Campaign) -> CampaignRound:
    row = s.get(CampaignRound, (c.id, c.round_no))
    assert row is not None, f"campaign {c.id} has no row for round {c.round_no}"
    return row


def _queue_step(
    s: Session, c: Campaign, settings: ServerSettings, now: datetime, jitter: Callable[[], float]
) -> str:
    p = c.policy
    cohort = fleet.get_cohort(s, c.cohort_id)
    round_id: str | None = c.round_id
    if c.step == "elicit":
        if s.get(CampaignRound, (c.id, c.round_no)) is None:
            s.add(CampaignRound(campaign_id=c.id, round_no=c.round_no, parent_adapter_id=cohort.adapter_id,
                                started_at=now))
        round_id = None
        params: dict[str, Any] = {"mode": p["mode"], "max_new_tokens": p["max_new_tokens"],
                                  "min_items": p["min_items"], "config": _round_seed(p["drafts"], c.round_no),
                                  "use_cohort_adapter": p["elicit_with_adapter"]}
    elif c.step == "align":
        params = {"config": p["align"], "pairs": p["pairs"]}
    elif c.step == "tailor":
        params = {"config": _round_seed(p["tailor"], c.round_no)}
    else:
        params = {}
    job = queue.create_job(s, kind=c.step, cohort_id=c.cohort_id, round_id=round_id, params=params,
                           max_attempts=p.get("job_max_attempts") or settings.job_max_attempts, now=now,
                           campaign_id=c.id, key=f"{c.id}:{c.version + 1}")
    wait = ""
    if c.failures:   # the step's last job failed: the new one waits, as a job's own retry does
        job.not_before, _ = queue.Backoff(settings.job_retry_base_s, settings.job_retry_max_s,
                                          jitter).not_before(c.failures, now)
        wait = f", not before {job.not_before.isoformat()}" if job.not_before else ""
    c.job_id = job.id
    return record(s, c, "queued", f"round {c.round_no}: {c.step} job {job.id} queued{wait}", now, job.id)


def _round_seed(config: dict[str, Any], round_no: int) -> dict[str, Any]:
    """The config with its sampling seed moved on by the round: each round gets new drafts and new data."""
    return {**config, "seed": int(config.get("seed", 0)) + round_no - 1}


def _n_reported(s: Session, round_id: str) -> int:
    return int(s.scalar(sa.select(sa.func.count(sa.distinct(Report.device_id))).where(Report.round_id == round_id))
               or 0)


def _collect(s: Session, c: Campaign, now: datetime) -> str | None:
    rnd = fleet.get_round(s, c.round_id or "")
    n = _n_reported(s, rnd.id)
    want = c.policy.get("close_devices")
    if rnd.state == "closed":
        why = "closed by an operator"
    elif want and n >= want:
        why = f"{n} devices reported (the rule: {want})"
    elif rnd.closes_at is not None and now >= rnd.closes_at:
        why = f"its deadline passed with {n} devices reported"
    else:
        return None
    fleet.close_round(s, rnd.id, now)
    row = _round_row(s, c)
    row.n_reports, row.closed_at = n, now
    c.step = "aggregate"
    return record(s, c, "closed", f"round {c.round_no}: round {rnd.id} closed: {why}", now, step="collect")


def _succeeded(s: Session, c: Campaign, job: Job, now: datetime) -> str:
    res = job.result or {}
    row = _round_row(s, c)
    c.job_id, c.failures = None, 0
    step = c.step
    if step == "elicit":
        rnd = fleet.get_round(s, res["round_id"])
        c.round_id = row.round_id = rnd.id
        deadline = c.policy.get("deadline_s")
        if deadline and rnd.closes_at is None:
            rnd.closes_at = now + timedelta(seconds=float(deadline))
        c.step = "collect"
        msg = f"round {rnd.id} opened with {res.get('n_drafts')} drafts" + (
            f", closes at {rnd.closes_at.isoformat()} at the latest" if rnd.closes_at else "")
    elif step == "aggregate":
        row.n_devices = res.get("n_devices")
        if res.get("may_align"):
            c.step = "align"
            msg = f"{row.n_devices} devices in the aggregate (k={res.get('min_devices')}): align"
        else:
            row.align, c.step = "below_k", "tailor"
            msg = (f"{row.n_devices} devices in the aggregate, below the cohort's k={res.get('min_devices')}: "
                   "no alignment this round, the teacher stays as it is")
    elif step == "align":
        row.adapter_id, row.n_pairs = res.get("adapter_id"), res.get("n_pairs")
        row.align = "pairs" if row.adapter_id else str(res.get("outcome") or "no_signal")
        c.step = "tailor"
        msg = (f"adapter {row.adapter_id} aligned on {row.n_pairs} pairs" if row.adapter_id
               else f"no new adapter ({row.align}): {res.get('reason', '')}".rstrip(": "))
    else:   # tailor: the dataset is published (the cohort's newest); the round is done
        row.dataset_id, row.finished_at = res.get("dataset_id"), now
        return _round_done(s, c, row, job, now)
    return record(s, c, "done", f"round {c.round_no}: {step} job {job.id}: {msg}", now, job.id, step=step)


def _stop_rule(s: Session, c: Campaign) -> str | None:
    """Why the campaign stops (devices no longer keep the adapters trained on its datasets), or None."""
    threshold = c.policy.get("stop_if_kept_below")
    prev = s.get(CampaignRound, (c.id, c.round_no - 1)) if threshold else None
    if prev is None or prev.dataset_id is None:
        return None
    kept: dict[str, bool] = {}
    for device_id, k in s.execute(sa.select(DeviceMetrics.device_id, DeviceMetrics.kept)
                                  .where(DeviceMetrics.dataset_id == prev.dataset_id)
                                  .order_by(DeviceMetrics.received_at, DeviceMetrics.id)):
        kept[device_id] = bool(k)
    if len(kept) < int(c.policy.get("min_metrics") or 1):
        return None
    share = sum(kept.values()) / len(kept)
    if share >= threshold:
        return None
    return (f"devices stopped keeping adapters: {sum(kept.values())} of {len(kept)} kept the one trained on "
            f"dataset {prev.dataset_id} (round {prev.round_no}); the policy stops below {threshold:g}")


def _round_done(s: Session, c: Campaign, row: CampaignRound, job: Job, now: datetime) -> str:
    done = f"round {c.round_no}: tailor job {job.id}: dataset {row.dataset_id} published"
    finished = {"step": "tailor", "round_no": c.round_no}
    why_stop = _stop_rule(s, c)
    if c.rounds is not None and c.round_no >= c.rounds:
        c.state, c.finished_at = "completed", now
        return record(s, c, "completed", f"{done}; all {c.rounds} rounds done", now, job.id, **finished)
    if why_stop is not None:
        c.state, c.reason, c.finished_at = "stopped", why_stop, now
        return record(s, c, "stopped", f"{done}; {why_stop}", now, job.id, **finished)
    c.round_no, c.step, c.round_id = c.round_no + 1, "elicit", None
    return record(s, c, "done", f"{done}; round {c.round_no} next", now, job.id, **finished)


def _failed(s: Session, c: Campaign, job: Job | None, now: datetime) -> str:
    why = (job.error or f"the job was {job.state}") if job is not None else f"job {c.job_id} is gone"
    c.failures += 1
    failed_id, c.job_id = c.job_id, None
    limit = int(c.policy.get("max_failures") or 3)
    head = f"round {c.round_no}: {c.step} job {failed_id} {job.state if job else 'vanished'}"
    if c.failures >= limit:
        c.state = "paused"
        c.reason = f"round {c.round_no}, step {c.step}: {c.failures} jobs failed in a row; the last: {why[:2000]}"
        return record(s, c, "paused", f"{head}; paused after {c.failures} failures: {why[:2000]}", now, failed_id)
    return record(s, c, "failed", f"{head} ({c.failures}/{limit}): {why[:2000]}", now, failed_id)

