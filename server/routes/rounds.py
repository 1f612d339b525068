"""Rounds: the device's current round and its drafts; creating, listing and closing rounds (admin)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response

from arte import wire
from server import fleet
from server.deps import AdminDep, Creds, NowDep, SessionDep, unit_of_work
from server.errors import BadRequest, Forbidden, NotFound, Unprocessable
from server.openapi import raises
from server.routes.common import IdPath, IdPathLate, IdQuery
from server.schemas import RoundIn, RoundOut

router = APIRouter(prefix=wire.API_PREFIX, tags=["rounds"])


@router.get(
    "/rounds/current",
    response_model=wire.RoundInfo,
    responses=raises(Forbidden, (NotFound, "The device's cohort has no open round.")),
)
async def current(request: Request, creds: Creds) -> wire.RoundInfo:
    """The newest open round of the device's cohort (404 when there is none)."""
    # what every device polls: one thread hand-off (server.deps.unit_of_work)
    return await unit_of_work(
        request,
        creds,
        lambda s, who, now, _: fleet.round_info(s, fleet.current_round(s, who.device.cohort_id, now)),
        device_only=True,
    )


@router.get("/rounds/{round_id}/drafts", response_model=wire.RoundDrafts)
async def drafts(round_id: IdPathLate, request: Request, creds: Creds) -> Response:
    """A round's drafts; a device sees only rounds of its own cohort."""

    def unit(s: Any, who: Any, now: Any, body: Any) -> bytes:
        cohort = who.device.cohort_id if who.device else None
        # every device of the cohort pulls the same immutable body: served from the process cache
        return fleet.round_drafts_json(s, round_id, cohort_id=cohort)

    data = await unit_of_work(request, creds, unit, device_only=False, ids={"round_id": round_id})
    return Response(data, media_type="application/json")


@router.post(
    "/rounds",
    status_code=201,
    response_model=RoundOut,
    responses=raises(
        (NotFound, "No such cohort."),
        BadRequest,
        (Unprocessable, "A field is invalid, or the privacy policy is looser than the cohort's."),
    ),
)
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
