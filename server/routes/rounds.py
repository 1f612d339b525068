"""Rounds: the device's current round and its drafts; creating, listing and closing rounds (admin)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from arte import wire
from server import fleet
from server.deps import AdminDep, AnyDep, DeviceDep, NowDep, SessionDep
from server.routes.common import ERRORS, IdPath, IdQuery
from server.schemas import RoundIn, RoundOut

router = APIRouter(prefix=wire.API_PREFIX, tags=["rounds"], responses=ERRORS)


@router.get("/rounds/current", response_model=wire.RoundInfo)
def current(device: DeviceDep, s: SessionDep, now: NowDep) -> wire.RoundInfo:
    """The newest open round of the device's cohort (404 when there is none)."""
    return fleet.round_info(s, fleet.current_round(s, device.cohort_id, now))


@router.get("/rounds/{round_id}/drafts", response_model=wire.RoundDrafts)
def drafts(round_id: IdPath, who: AnyDep, s: SessionDep) -> wire.RoundDrafts:
    """A round's drafts; a device sees only rounds of its own cohort."""
    cohort = who.device.cohort_id if who.device else None
    return fleet.round_drafts(s, fleet.get_round(s, round_id, cohort_id=cohort))


@router.post("/rounds", status_code=201, response_model=RoundOut)
def create(body: RoundIn, _: AdminDep, s: SessionDep, now: NowDep) -> RoundOut:
    """Open a round of drafts for a cohort."""
    return fleet.round_out(s, fleet.create_round(s, body, now))


@router.get("/rounds", response_model=list[RoundOut])
def list_rounds(
    _: AdminDep, s: SessionDep, cohort_id: IdQuery = None, state: Literal["open", "closed"] | None = None
) -> list[RoundOut]:
    return [fleet.round_out(s, r) for r in fleet.list_rounds(s, cohort_id, state)]


@router.get("/rounds/{round_id}", response_model=RoundOut)
def show(round_id: IdPath, _: AdminDep, s: SessionDep) -> RoundOut:
    return fleet.round_out(s, fleet.get_round(s, round_id))


@router.post("/rounds/{round_id}/close", response_model=RoundOut)
def close(round_id: IdPath, _: AdminDep, s: SessionDep, now: NowDep) -> RoundOut:
    """Close a round: later reports are refused (409); stored ones are kept."""
    return fleet.round_out(s, fleet.close_round(s, round_id, now))
