"""The cohort aggregates of a round's reports: computed (:mod:`server.aggregation`), stored, shown.

Contract as in :mod:`server.fleet`: functions run inside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from server import aggregation
from server.schemas import AggregateOut
from server.tables import (
    Aggregate,
    Cohort,
    Report,
    ReportScore,
    Round,
    new_id,
)

__all__ = ["aggregate_out", "compute_aggregate", "latest_aggregate", "per_device_aggregates", "store_aggregate", "stored_aggregate_out"]


def _score_rows(s: Session, rnd: Round) -> list[aggregation.ScoreRow]:
    q = (
        sa.select(
            Report.device_id, ReportScore.draft_id, ReportScore.n_items, ReportScore.n_correct, Report.privacy
        )
        .join(ReportScore, ReportScore.report_id == Report.id)
        .where(Report.round_id == rnd.id)
        .order_by(Report.received_at, Report.id, ReportScore.draft_id)
    )
    return [
        aggregation.ScoreRow(device_id=d, draft_id=k, n_items=n, n_correct=c, privacy=p)
        for d, k, n, c, p in s.execute(q)
    ]


def compute_aggregate(s: Session, rnd: Round) -> aggregation.CohortAggregate:
    """The aggregate of every report stored for ``rnd`` (k is the cohort's ``min_devices``)."""
    cohort = s.get(Cohort, rnd.cohort_id)
    assert cohort is not None
    return aggregation.aggregate(_score_rows(s, rnd), cohort.min_devices)


def per_device_aggregates(s: Session, rnd: Round) -> dict[str, aggregation.CohortAggregate]:
    """Each device's own per-draft scores for ``rnd`` (the admin's personalization view)."""
    by_device: dict[str, list[aggregation.ScoreRow]] = {}
    for row in _score_rows(s, rnd):
        by_device.setdefault(row.device_id, []).append(row)
    return {d: aggregation.aggregate(rows, 1) for d, rows in by_device.items()}


def store_aggregate(
    s: Session, rnd: Round, agg: aggregation.CohortAggregate, now: datetime, job_id: str | None = None
) -> Aggregate:
    row = Aggregate(
        id=new_id("agg"),
        cohort_id=rnd.cohort_id,
        round_id=rnd.id,
        n_devices=agg.n_devices,
        min_devices=agg.min_devices,
        drafts={k: v.to_dict() for k, v in agg.drafts.items()},
        job_id=job_id,
        computed_at=now,
    )
    s.add(row)
    s.flush()
    return row


def latest_aggregate(s: Session, round_id: str) -> Aggregate | None:
    return s.scalar(
        sa.select(Aggregate)
        .where(Aggregate.round_id == round_id)
        .order_by(Aggregate.computed_at.desc(), Aggregate.id.desc())
        .limit(1)
    )


def aggregate_out(
    rnd: Round, agg: aggregation.CohortAggregate, computed_at: datetime, job_id: str | None = None
) -> AggregateOut:
    return AggregateOut(
        cohort_id=rnd.cohort_id,
        round_id=rnd.id,
        n_devices=agg.n_devices,
        min_devices=agg.min_devices,
        meets_k=agg.meets_k,
        may_align=agg.may_align,
        reason=agg.reason,
        drafts={k: v.to_dict() for k, v in agg.drafts.items()},
        excluded=agg.excluded,
        computed_at=computed_at,
        job_id=job_id,
    )


def stored_aggregate_out(rnd: Round, row: Aggregate) -> AggregateOut:
    """A stored aggregate; ``may_align`` and ``eligible`` are derived from its stored counts."""
    may_align, reason, eligible = aggregation.stored_decision(row.n_devices, row.min_devices, row.drafts)
    return AggregateOut(
        cohort_id=rnd.cohort_id,
        round_id=rnd.id,
        n_devices=row.n_devices,
        min_devices=row.min_devices,
        meets_k=row.n_devices >= row.min_devices,
        may_align=may_align,
        reason=reason,
        drafts={k: {**v, "eligible": k in eligible} for k, v in row.drafts.items()},
        computed_at=row.computed_at,
        job_id=row.job_id,
    )
