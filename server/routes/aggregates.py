"""Aggregates (admin only; a device key gets 403): a round's per-draft cohort estimates (unbiased under
local DP, with variance and 95% interval, see :mod:`server.aggregation`), and the per-device view."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from arte.wire import API_PREFIX
from server import aggregates, fleet
from server.deps import AdminDep, NowDep, SessionDep
from server.errors import NotFound
from server.routes.common import IdPath
from server.schemas import AggregateOut, DraftEstimateOut

router = APIRouter(prefix=API_PREFIX, tags=["aggregates"])


@router.get("/aggregates/{round_id}", response_model=AggregateOut)
def live(round_id: IdPath, _: AdminDep, s: SessionDep, now: NowDep) -> AggregateOut:
    """The aggregate computed now from every stored report of the round."""
    rnd = fleet.get_round(s, round_id)
    return aggregates.aggregate_out(rnd, aggregates.compute_aggregate(s, rnd), now)


@router.get("/aggregates/{round_id}/stored", response_model=AggregateOut)
def stored(round_id: IdPath, _: AdminDep, s: SessionDep) -> AggregateOut:
    """The newest aggregate stored by an ``aggregate`` job (404 when none ran)."""
    rnd = fleet.get_round(s, round_id)
    row = aggregates.latest_aggregate(s, round_id)
    if row is None:
        raise NotFound(f"no stored aggregate for round {round_id}", field="round_id")
    return aggregates.stored_aggregate_out(rnd, row)


@router.get("/aggregates/{round_id}/devices", response_model=dict[str, dict[str, DraftEstimateOut]])
def per_device(round_id: IdPath, _: AdminDep, s: SessionDep) -> dict[str, dict[str, Any]]:
    """Per device (personalization view, admin only): device id -> draft id -> that device's own estimate
    (``n_items``, ``n_correct``, ``score``, ``accuracy`` with its variance and 95% interval)."""
    rnd = fleet.get_round(s, round_id)
    return {
        d: {k: v.to_dict() for k, v in agg.drafts.items()}
        for d, agg in aggregates.per_device_aggregates(s, rnd).items()
    }
