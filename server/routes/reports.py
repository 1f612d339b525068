"""Reports: a device posts its per-draft counts for a round; devices read their own, the admin all."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.exc import IntegrityError

from arte import wire
from server import fleet, results
from server.deps import AnyDep, DeviceDep, NowDep, SessionDep
from server.routes.common import ERRORS, IdPath, IdQuery
from server.schemas import ReportIn, ReportOut

router = APIRouter(prefix=wire.API_PREFIX, tags=["reports"], responses=ERRORS)


@router.post(
    "/rounds/{round_id}/reports",
    response_model=wire.ReportReceipt,
    responses={409: {"description": "Closed round, or another idempotency key for this round."}},
)
def submit(
    round_id: IdPath, body: ReportIn, device: DeviceDep, s: SessionDep, now: NowDep
) -> wire.ReportReceipt:
    """Store a report (all or nothing). Re-sending with the same idempotency key returns the stored
    receipt with ``duplicate=true``."""
    try:
        with s.begin_nested():
            return results.submit_report(s, device, round_id, body, now)
    except IntegrityError:
        # Two copies of one report raced (PostgreSQL); the other one committed first, and READ COMMITTED
        # lets this transaction see it now: answer as a re-send would (duplicate, or 409 on another key).
        return results.submit_report(s, device, round_id, body, now)


@router.get("/rounds/{round_id}/reports", response_model=list[ReportOut])
def round_reports(round_id: IdPath, who: AnyDep, s: SessionDep) -> list[ReportOut]:
    """A round's reports: all of them for the admin, only its own for a device."""
    fleet.get_round(s, round_id, cohort_id=who.device.cohort_id if who.device else None)
    device_id = who.device.id if who.device else None
    return [
        results.report_out(s, r)
        for r in results.list_reports(s, device_id=device_id, round_id=round_id)
        if device_id is None or r.device_id == device_id
    ]


@router.get("/reports", response_model=list[ReportOut])
def list_reports(
    who: AnyDep, s: SessionDep, round_id: IdQuery = None, device_id: IdQuery = None
) -> list[ReportOut]:
    """Reports: a device gets only its own (``device_id`` is ignored for it)."""
    if who.device is not None:
        device_id = who.device.id
    return [results.report_out(s, r) for r in results.list_reports(s, device_id=device_id, round_id=round_id)]


@router.get("/reports/{report_id}", response_model=ReportOut)
def show(report_id: IdPath, who: AnyDep, s: SessionDep) -> ReportOut:
    return results.report_out(
        s, results.get_report(s, report_id, device_id=who.device.id if who.device else None)
    )
