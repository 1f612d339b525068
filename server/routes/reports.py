"""Reports: a device posts its per-draft counts for a round; devices read their own, the admin all."""

from __future__ import annotations

from fastapi import APIRouter, Request

from arte import wire
from server import fleet, report_store, reports
from server.deps import AnyDep, Creds, SessionDep, unit_of_work
from server.errors import BadRequest, Conflict, Forbidden, Unprocessable
from server.openapi import raises
from server.routes.common import IdPath, IdPathLate, IdQuery, json_body
from server.schemas import ReportIn, ReportOut

router = APIRouter(prefix=wire.API_PREFIX, tags=["reports"])


@router.post(
    "/rounds/{round_id}/reports",
    response_model=wire.ReportReceipt,
    responses=raises(
        Forbidden,
        BadRequest,
        (Conflict, "Closed round, or another idempotency key for this round."),
        (Unprocessable, "A field is invalid, or the declared privacy is looser than the round's."),
    ),
    openapi_extra=json_body(ReportIn),
)
async def submit(round_id: IdPathLate, request: Request, creds: Creds) -> wire.ReportReceipt:
    """Store a report (all or nothing). Re-sending with the same idempotency key returns the stored
    receipt with ``duplicate=true`` (also when two copies race: see :mod:`server.report_store`)."""
    # the busiest route: key, checks and insert in one thread hand-off (server.deps.unit_of_work)
    return await unit_of_work(
        request,
        creds,
        lambda s, who, now, body: report_store.submit_report(s, who.device, round_id, body, now),
        device_only=True,
        ids={"round_id": round_id},
        body=ReportIn,
    )


@router.get("/rounds/{round_id}/reports", response_model=list[ReportOut])
def round_reports(round_id: IdPath, who: AnyDep, s: SessionDep) -> list[ReportOut]:
    """A round's reports: all of them for the admin, only its own for a device."""
    fleet.get_round(s, round_id, cohort_id=who.device.cohort_id if who.device else None)
    device_id = who.device.id if who.device else None
    return [
        reports.report_out(s, r)
        for r in reports.list_reports(s, device_id=device_id, round_id=round_id)
        if device_id is None or r.device_id == device_id
    ]


@router.get("/reports", response_model=list[ReportOut])
def list_reports(
    who: AnyDep, s: SessionDep, round_id: IdQuery = None, device_id: IdQuery = None
) -> list[ReportOut]:
    """Reports: a device gets only its own (``device_id`` is ignored for it)."""
    if who.device is not None:
        device_id = who.device.id
    return [reports.report_out(s, r) for r in reports.list_reports(s, device_id=device_id, round_id=round_id)]


@router.get("/reports/{report_id}", response_model=ReportOut)
def show(report_id: IdPath, who: AnyDep, s: SessionDep) -> ReportOut:
    return reports.report_out(
        s, reports.get_report(s, report_id, device_id=who.device.id if who.device else None)
    )
