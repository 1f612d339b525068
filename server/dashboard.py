"""The fleet dashboard's data: one admin summary of the whole fleet, read in a handful of queries.

Contract: :func:`summary` runs inside the caller's transaction and only reads. Totals are exact counts
over every row; the lists (devices, rounds, jobs, datasets, accuracy points) hold the newest ``limit``
rows each, and ``truncated`` says which lists were cut. Counts per row (a device's reports, a round's
reports) come from ``GROUP BY`` queries, never one query per row, so the cost does not grow with the
number of rows shown times a query round-trip. ``generated_at`` is the server's clock, so the page
shows "last contact" relative to the server, not to the browser.

The response models live here (not in :mod:`server.schemas`) because only the dashboard uses them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from server import campaigns, fleet
from server.campaigns import CampaignOut
from server.schemas import JOB_KINDS, JOB_STATES
from server.tables import Adapter, Campaign, Cohort, Dataset, Device, DeviceMetrics, Job, Report, Round, Task

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Totals",
    "CohortRow",
    "DeviceRow",
    "RoundRow",
    "JobRow",
    "DatasetRow",
    "AccuracyPoint",
    "Summary",
    "summary",
    "CampaignOut",
]

DEFAULT_LIMIT = 500
MAX_LIMIT = 10_000


class Totals(BaseModel):
    """Exact counts over the whole fleet."""

    cohorts: int
    devices: int
    devices_active: int
    devices_revoked: int
    rounds: int
    rounds_open: int
    reports: int
    jobs: int
    datasets: int
    dataset_bytes: int = Field(description="Sum of the stored datasets' sizes.")
    metrics: int = Field(description="Before/after accuracy records received from devices.")


class CohortRow(BaseModel):
    cohort_id: str
    name: str
    task_id: str
    task_name: str
    student_model: str
    profile_class: str
    min_devices: int
    n_devices: int = Field(description="Devices of the cohort whose key is not revoked.")
    adapter_id: str | None = Field(description="The teacher's adapter for the cohort (None: the base teacher).")
    adapter_lineage: list[str] = Field(description="The adapter's ancestors, parent first.")
    created_at: datetime


class DeviceRow(BaseModel):
    device_id: str
    device_name: str
    cohort_id: str
    profile_id: str
    agent_version: str
    enrolled_at: datetime
    last_seen_at: datetime | None = Field(description="Last authenticated request (60 s granularity).")
    revoked_at: datetime | None
    n_reports: int
    n_metrics: int


class RoundRow(BaseModel):
    round_id: str
    cohort_id: str
    state: str
    open_now: bool = Field(description="Open and not past closes_at: reports are accepted now.")
    mode: str
    n_drafts: int
    n_reports: int
    created_at: datetime
    closes_at: datetime | None
    closed_at: datetime | None


class JobRow(BaseModel):
    job_id: str
    kind: str
    cohort_id: str | None
    round_id: str | None
    state: str
    attempts: int
    max_attempts: int
    progress: float | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DatasetRow(BaseModel):
    dataset_id: str
    cohort_id: str
    round_id: str | None
    sha256: str
    size: int
    n_examples: int
    teacher: str
    created_at: datetime


class AccuracyPoint(BaseModel):
    """One fine-tune on one device: its holdout accuracy before and after, and whether it was kept."""

    metrics_id: str
    device_id: str
    dataset_id: str
    received_at: datetime
    before_zero_shot: float | None
    before_three_shot: float | None
    after_zero_shot: float | None
    after_three_shot: float | None
    n_items: int | None
    kept: bool


class Summary(BaseModel):
    generated_at: datetime = Field(description="The server's clock when the summary was read.")
    limit: int = Field(description="Most rows in each list (newest first).")
    totals: Totals
    job_states: dict[str, int] = Field(description="Jobs per state (every state, zeros included).")
    jobs_by_kind: dict[str, dict[str, int]] = Field(description="Jobs per kind, then per state.")
    truncated: dict[str, bool] = Field(description="Which lists hold fewer rows than exist.")
    cohorts: list[CohortRow]
    devices: list[DeviceRow]
    rounds: list[RoundRow]
    jobs: list[JobRow]
    datasets: list[DatasetRow]
    accuracy: list[AccuracyPoint] = Field(description="Before/after accuracy per device, oldest first.")
    campaigns: list[CampaignOut] = Field(
        default_factory=list, description="Campaigns with their rounds' lineage and figures, oldest first."
    )


def _count(s: Session, model: Any, *where: Any) -> int:
    return int(s.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)


def _counts_by(s: Session, column: Any, *where: Any) -> dict[str, int]:
    rows = s.execute(sa.select(column, sa.func.count()).where(*where).group_by(column))
    return {k: int(n) for k, n in rows}


def _num(acc: dict[str, Any], key: str) -> float | None:
    v = acc.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _totals(s: Session, now: datetime) -> Totals:
    n_rounds_open = _count(
        s, Round, Round.state == "open", sa.or_(Round.closes_at.is_(None), Round.closes_at > now)
    )
    return Totals(
        cohorts=_count(s, Cohort),
        devices=_count(s, Device),
        devices_active=_count(s, Device, Device.revoked_at.is_(None)),
        devices_revoked=_count(s, Device, Device.revoked_at.is_not(None)),
        rounds=_count(s, Round),
        rounds_open=n_rounds_open,
        reports=_count(s, Report),
        jobs=_count(s, Job),
        datasets=_count(s, Dataset),
        dataset_bytes=int(s.scalar(sa.select(sa.func.coalesce(sa.func.sum(Dataset.size), 0))) or 0),
        metrics=_count(s, DeviceMetrics),
    )


def _newest(s: Session, model: Any, created: Any, limit: int) -> tuple[list[Any], bool]:
    """The newest ``limit`` rows, returned oldest first, and whether more exist."""
    rows = list(s.scalars(sa.select(model).order_by(created.desc(), model.id.desc()).limit(limit + 1)))
    return rows[:limit][::-1], len(rows) > limit


def _cohorts(s: Session) -> list[CohortRow]:
    active = _counts_by(s, Device.cohort_id, Device.revoked_at.is_(None))
    parents = dict(s.execute(sa.select(Adapter.id, Adapter.parent_id)).all())

    def lineage(adapter_id: str | None) -> list[str]:
        out: list[str] = []
        while adapter_id is not None and (adapter_id := parents.get(adapter_id)) is not None and adapter_id not in out:
            out.append(adapter_id)
        return out

    q = sa.select(Cohort, Task.name).join(Task, Task.id == Cohort.task_id).order_by(Cohort.created_at, Cohort.id)
    return [
        CohortRow(
            cohort_id=c.id,
            name=c.name,
            task_id=c.task_id,
            task_name=task_name,
            student_model=c.student_model,
            profile_class=c.profile_class,
            min_devices=c.min_devices,
            n_devices=active.get(c.id, 0),
            adapter_id=c.adapter_id,
            adapter_lineage=lineage(c.adapter_id),
            created_at=c.created_at,
        )
        for c, task_name in s.execute(q)
    ]


def _devices(s: Session, limit: int) -> tuple[list[DeviceRow], bool]:
    devices, cut = _newest(s, Device, Device.enrolled_at, limit)
    ids = [d.id for d in devices]
    reports = _counts_by(s, Report.device_id, Report.device_id.in_(ids)) if ids else {}
    metrics = _counts_by(s, DeviceMetrics.device_id, DeviceMetrics.device_id.in_(ids)) if ids else {}
    rows = [
        DeviceRow(
            device_id=d.id,
            device_name=d.name,
            cohort_id=d.cohort_id,
            profile_id=d.profile_id,
            agent_version=d.agent_version,
            enrolled_at=d.enrolled_at,
            last_seen_at=d.last_seen_at,
            revoked_at=d.revoked_at,
            n_reports=reports.get(d.id, 0),
            n_metrics=metrics.get(d.id, 0),
        )
        for d in devices
    ]
    return rows, cut


def _rounds(s: Session, limit: int, now: datetime) -> tuple[list[RoundRow], bool]:
    rounds, cut = _newest(s, Round, Round.created_at, limit)
    ids = [r.id for r in rounds]
    reports = _counts_by(s, Report.round_id, Report.round_id.in_(ids)) if ids else {}
    rows = [
        RoundRow(
            round_id=r.id,
            cohort_id=r.cohort_id,
            state=r.state,
            open_now=fleet.is_open(r, now),
            mode=r.mode,
            n_drafts=r.n_drafts,
            n_reports=reports.get(r.id, 0),
            created_at=r.created_at,
            closes_at=r.closes_at,
            closed_at=r.closed_at,
        )
        for r in rounds
    ]
    return rows, cut


def _jobs(s: Session, limit: int) -> tuple[list[JobRow], bool]:
    jobs, cut = _newest(s, Job, Job.created_at, limit)
    rows = [
        JobRow(
            job_id=j.id,
            kind=j.kind,
            cohort_id=j.cohort_id,
            round_id=j.round_id,
            state=j.state,
            attempts=j.attempts,
            max_attempts=j.max_attempts,
            progress=j.progress,
            error=j.error,
            created_at=j.created_at,
            started_at=j.started_at,
            finished_at=j.finished_at,
        )
        for j in jobs
    ]
    return rows, cut


def _datasets(s: Session, limit: int) -> tuple[list[DatasetRow], bool]:
    datasets, cut = _newest(s, Dataset, Dataset.created_at, limit)
    rows = [
        DatasetRow(
            dataset_id=d.id,
            cohort_id=d.cohort_id,
            round_id=d.round_id,
            sha256=d.sha256,
            size=d.size,
            n_examples=d.n_examples,
            teacher=d.teacher,
            created_at=d.created_at,
        )
        for d in datasets
    ]
    return rows, cut


def _accuracy(s: Session, limit: int) -> tuple[list[AccuracyPoint], bool]:
    metrics, cut = _newest(s, DeviceMetrics, DeviceMetrics.received_at, limit)
    rows = []
    for m in metrics:
        before, after = m.before or {}, m.after or {}
        n_items = after.get("n_items", before.get("n_items"))
        rows.append(
            AccuracyPoint(
                metrics_id=m.id,
                device_id=m.device_id,
                dataset_id=m.dataset_id,
                received_at=m.received_at,
                before_zero_shot=_num(before, "zero_shot"),
                before_three_shot=_num(before, "three_shot"),
                after_zero_shot=_num(after, "zero_shot"),
                after_three_shot=_num(after, "three_shot"),
                n_items=int(n_items) if isinstance(n_items, int) else None,
                kept=m.kept,
            )
        )
    return rows, cut


def summary(s: Session, now: datetime, limit: int = DEFAULT_LIMIT) -> Summary:
    """The whole fleet for the dashboard (see the module docstring)."""
    by_kind_state = s.execute(sa.select(Job.kind, Job.state, sa.func.count()).group_by(Job.kind, Job.state))
    jobs_by_kind: dict[str, dict[str, int]] = {k: dict.fromkeys(JOB_STATES, 0) for k in JOB_KINDS}
    job_states = dict.fromkeys(JOB_STATES, 0)
    for kind, state, n in by_kind_state:
        jobs_by_kind.setdefault(kind, dict.fromkeys(JOB_STATES, 0))[state] = int(n)
        job_states[state] = job_states.get(state, 0) + int(n)
    devices, devices_cut = _devices(s, limit)
    rounds, rounds_cut = _rounds(s, limit, now)
    jobs, jobs_cut = _jobs(s, limit)
    datasets, datasets_cut = _datasets(s, limit)
    accuracy, accuracy_cut = _accuracy(s, limit)
    newest_campaigns, campaigns_cut = _newest(s, Campaign, Campaign.created_at, limit)
    return Summary(
        generated_at=now,
        limit=limit,
        totals=_totals(s, now),
        job_states=job_states,
        jobs_by_kind=jobs_by_kind,
        truncated={
            "devices": devices_cut,
            "rounds": rounds_cut,
            "jobs": jobs_cut,
            "datasets": datasets_cut,
            "accuracy": accuracy_cut,
            "campaigns": campaigns_cut,
        },
        cohorts=_cohorts(s),
        devices=devices,
        rounds=rounds,
        jobs=jobs,
        datasets=datasets,
        accuracy=accuracy,
        campaigns=[campaigns.campaign_out(s, c) for c in newest_campaigns],
    )
