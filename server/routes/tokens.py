"""Enrollment tokens (admin): one-time, expiring, bound to a cohort. The token is shown only at creation."""

from __future__ import annotations

from fastapi import APIRouter, Request

from arte.wire import API_PREFIX
from server import fleet
from server.deps import AdminDep, NowDep, SessionDep
from server.errors import NotFound
from server.openapi import raises
from server.routes.common import IdQuery
from server.schemas import TokenIn, TokenInfo, TokenOut

router = APIRouter(prefix=API_PREFIX, tags=["tokens"])


@router.post(
    "/tokens", status_code=201, response_model=TokenOut, responses=raises((NotFound, "No such cohort."))
)
def create(body: TokenIn, request: Request, _: AdminDep, s: SessionDep, now: NowDep) -> TokenOut:
    row, token = fleet.create_token(s, body, now, request.app.state.settings.enroll_token_ttl_s)
    return TokenOut(token_id=row.id, token=token, cohort_id=row.cohort_id, expires_at=row.expires_at)


@router.get("/tokens", response_model=list[TokenInfo])
def list_tokens(_: AdminDep, s: SessionDep, cohort_id: IdQuery = None) -> list[TokenInfo]:
    return [
        TokenInfo(
            token_id=t.id,
            cohort_id=t.cohort_id,
            note=t.note,
            created_at=t.created_at,
            expires_at=t.expires_at,
            used_at=t.used_at,
            device_id=t.device_id,
        )
        for t in fleet.list_tokens(s, cohort_id)
    ]
