"""``POST /api/v1/enroll``: a device spends a one-time enrollment token for a device id and key."""

from __future__ import annotations

from fastapi import APIRouter, Request

from arte import wire
from server import fleet
from server.deps import NowDep, SessionDep, check_rate
from server.errors import RateLimited, Unauthorized
from server.openapi import raises
from server.schemas import EnrollIn

router = APIRouter(prefix=wire.API_PREFIX, tags=["devices"])


@router.post(
    "/enroll",
    status_code=201,
    response_model=wire.EnrollResponse,
    responses=raises((Unauthorized, "The enrollment token is not valid, was used or has expired."), RateLimited),
)
def enroll(body: EnrollIn, request: Request, s: SessionDep, now: NowDep) -> wire.EnrollResponse:
    """Enroll a device into the token's cohort. The device key is shown once; the server keeps a hash."""
    check_rate(request, f"ip:{request.client.host if request.client else '-'}")
    device, key = fleet.enroll(
        s,
        body.token,
        device_name=body.device_name,
        profile_id=body.profile_id,
        hardware=body.hardware,
        agent_version=body.agent_version,
        now=now,
    )
    return wire.EnrollResponse(
        device_id=device.id, device_key=key, cohort_id=device.cohort_id, server_time=now.isoformat()
    )
