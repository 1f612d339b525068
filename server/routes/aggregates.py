"""Aggregates (admin): per-draft, items-weighted cohort scores of a round, and the per-device view."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from arte.wire import API_PREFIX
from server import fleet, results
from server.deps import AdminDep, NowDep, SessionDep
from server.errors import NotFound
from server.routes.common import ERRORS, IdPath
from server.schemas import AggregateOut

router = APIRouter(prefix=API_PREFIX, tags=["aggregates"], responses=ERRORS)


@router.get("/aggregates/{round_id}", response_model=AggregateOut)
def live(round_id: IdPath, _: AdminDep, s: SessionDep, now: NowDep) -> AggregateOut:
    """The aggregate computed now from every stored report of the round."""
    rnd = fleet.get_round(s, round_id)
    return results.aggregate_out(rnd, results.compute_aggregate(s, rnd), now)


@router.get("/aggregates/{round_id}/stored", response_model=AggregateOut)
def stored(round_id: IdPath, _: AdminDep, s: SessionDep) -> AggregateOut:
    """The newest aggregate stored by an ``aggregate`` job (404 when none ran)."""
    rnd = fleet.get_round(s, round_id)
    row = results.latest_aggregate(s, round_id)
    if row is None:
        raise NotFound(f"no stored aggregate for round {round_id}", field="round_id")
    return AggregateOut(
        cohort_id=rnd.cohort_id,
        round_id=rnd.id,
        n_devices=row.n_devices,
        min_devices=row.min_devices,
        meets_k=row.n_devices >= row.min_devices,
        drafts=row.drafts,
        computed_at=row.computed_at,
        job_id=row.job_id,
    )


@router.get("/aggregates/{round_id}/devices", response_model=dict[str, dict[str, Any]])
def per_device(round_id: IdPath, _: AdminDep, s: SessionDep) -> dict[str, dict[str, Any]]:
    """Per device (personalization view): device id -> draft id -> {n_devices, n_items, n_correct, score}."""
    rnd = fleet.get_round(s, round_id)
    return {
        d: {k: v.to_dict() for k, v in agg.drafts.items()}
        for d, agg in results.per_device_aggregates(s, rnd).items()
    }
