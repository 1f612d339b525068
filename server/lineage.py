"""Lineage of a cohort's teacher: every adapter an align job wrote, the round and pairs that made it, the
adapter the cohort had when it was made (``parent_id``: the teacher that wrote that round's drafts), and
the datasets written with it; and the operator's rollback to an earlier adapter.

The cohort row keeps its current adapter as ``adapter_id`` (and the adapter's ``path`` as ``adapter``,
which the tailor and elicit jobs open). Contract as in :mod:`server.fleet`: the caller's transaction,
errors naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from server import fleet
from server.errors import Conflict, NotFound
from server.schemas import JOB_LIVE, Id
from server.tables import Adapter, Cohort, Dataset, Job, new_id

__all__ = [
    "AdapterOut",
    "RollbackIn",
    "record_adapter",
    "adapter_for_job",
    "get_adapter",
    "list_adapters",
    "ancestry",
    "rollback",
    "adapter_out",
    "reward_accuracy",
]


class AdapterOut(BaseModel):
    adapter_id: str
    cohort_id: str
    round_id: str | None = Field(description="The round whose reports made its pairs.")
    job_id: str | None = Field(description="The align job that wrote it.")
    parent_id: str | None = Field(description="The cohort's adapter when it was made (None: the base teacher).")
    lineage: list[str] = Field(description="Its ancestors, parent first, up to the base teacher.")
    n_pairs: int
    reward_accuracy_before: float | None = Field(description="DPO reward accuracy on held-out pairs, before.")
    reward_accuracy_after: float | None
    datasets: list[str] = Field(description="Datasets the teacher wrote with this adapter.")
    current: bool = Field(description="The cohort's adapter now.")
    path: str = Field(description="Where the server keeps it.")
    created_at: datetime


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_id: Id | None = Field(description="An earlier adapter of the cohort; null: the base teacher.")


def record_adapter(s: Session, cohort: Cohort, *, path: str, round_id: str | None, job_id: str, n_pairs: int,
                   summary: dict[str, Any], now: datetime) -> Adapter:
    """Store a new adapter of ``cohort`` (its parent: the cohort's adapter now) and make it the cohort's."""
    row = Adapter(id=new_id("adp"), cohort_id=cohort.id, path=path, round_id=round_id, job_id=job_id,
                  parent_id=cohort.adapter_id, n_pairs=n_pairs, summary=summary, created_at=now)
    s.add(row)
    s.flush()
    cohort.adapter, cohort.adapter_id = path, row.id
    return row


def adapter_for_job(s: Session, job_id: str) -> Adapter | None:
    """The adapter an earlier attempt of ``job_id`` stored (None when none did)."""
    return s.scalar(sa.select(Adapter).where(Adapter.job_id == job_id))


def get_adapter(s: Session, adapter_id: str, *, cohort_id: str | None = None, field: str = "adapter_id") -> Adapter:
    row = s.get(Adapter, adapter_id)
    if row is None or (cohort_id is not None and row.cohort_id != cohort_id):
        raise NotFound(f"no adapter {adapter_id}" + (f" of cohort {cohort_id}" if cohort_id else ""),
                       field=field, adapter_id=adapter_id)
    return row


def list_adapters(s: Session, cohort_id: str | None = None) -> list[Adapter]:
    q = sa.select(Adapter).order_by(Adapter.created_at, Adapter.id)
    if cohort_id:
        fleet.get_cohort(s, cohort_id)
        q = q.where(Adapter.cohort_id == cohort_id)
    return list(s.scalars(q))


def ancestry(s: Session, adapter: Adapter) -> list[str]:
    """The adapter's ancestors' ids, its parent first (cycles cannot occur: a parent is always older)."""
    out: list[str] = []
    parent = adapter.parent_id
    while parent is not None and parent not in out:
        out.append(parent)
        row = s.get(Adapter, parent)
        parent = row.parent_id if row is not None else None
    return out


def rollback(s: Session, cohort_id: str, adapter_id: str | None) -> Cohort:
    """Point the cohort back at an earlier adapter of its own (or the base teacher). Refused (409) while
    an align job of the cohort is queued or running: it would set its own adapter when it finishes."""
    cohort = s.scalar(sa.select(Cohort).where(Cohort.id == cohort_id).with_for_update())
    if cohort is None:
        raise NotFound(f"no cohort {cohort_id}", field="cohort_id", cohort_id=cohort_id)
    busy = s.scalar(sa.select(Job.id).where(Job.cohort_id == cohort_id, Job.kind == "align",
                                            Job.state.in_(JOB_LIVE)).limit(1))
    if busy is not None:
        raise Conflict(f"align job {busy} of cohort {cohort_id} is in flight; roll back after it ends",
                       field="cohort_id", job_id=busy)
    row = get_adapter(s, adapter_id, cohort_id=cohort_id) if adapter_id is not None else None
    cohort.adapter, cohort.adapter_id = (row.path, row.id) if row is not None else (None, None)
    s.flush()
    return cohort


def reward_accuracy(summary: dict[str, Any], when: str) -> float | None:
    """The DPO reward accuracy on the held-out pairs ``when`` (before/after) from an align summary."""
    held = ((summary.get("reward") or {}).get("held_out") or {}).get(when) or {}
    v = held.get("accuracy")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def adapter_out(s: Session, a: Adapter) -> AdapterOut:
    cohort = fleet.get_cohort(s, a.cohort_id)
    datasets = list(s.scalars(sa.select(Dataset.id).where(Dataset.adapter_id == a.id)
                              .order_by(Dataset.created_at, Dataset.id)))
    return AdapterOut(adapter_id=a.id, cohort_id=a.cohort_id, round_id=a.round_id, job_id=a.job_id,
                      parent_id=a.parent_id, lineage=ancestry(s, a), n_pairs=a.n_pairs,
                      reward_accuracy_before=reward_accuracy(a.summary, "before"),
                      reward_accuracy_after=reward_accuracy(a.summary, "after"), datasets=datasets,
                      current=cohort.adapter_id == a.id, path=a.path, created_at=a.created_at)
