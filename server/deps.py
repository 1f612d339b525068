"""Request dependencies: the per-request transaction, the clock, and who is calling.

Every route gets one session (:func:`get_session`), committed when the route returns and rolled back
on any error, so nothing is stored half-way. Authentication reads ``Authorization: Bearer <key>``:
:func:`require_admin` accepts only the admin key (a device key gets 403), :func:`require_device` only a
device key (an admin key gets 403), :func:`require_any` either. Unknown, malformed or revoked keys get
401. The rate limit is taken per key id before the database is touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from server import security
from server.db import transaction
from server.errors import Forbidden, RateLimited, Unauthorized
from server.models import AdminKey, Device

__all__ = [
    "get_session",
    "get_now",
    "Principal",
    "require_admin",
    "require_device",
    "require_any",
    "SessionDep",
    "NowDep",
    "AdminDep",
    "DeviceDep",
    "AnyDep",
    "check_rate",
]

_bearer = HTTPBearer(
    auto_error=False, description="An admin key (arte_ak_...) or a device key (arte_dk_...)."
)
LAST_SEEN_GRANULARITY = timedelta(seconds=60)


def get_session(request: Request) -> Iterator[Session]:
    with transaction(request.app.state.sessions) as s:
        yield s


def get_now(request: Request) -> datetime:
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


@dataclass(frozen=True)
class Principal:
    kind: str  # "admin" | "device"
    id: str
    device: Device | None = None


def check_rate(request: Request, key: str) -> None:
    retry = request.app.state.limiter.check(key)
    if retry is not None:
        raise RateLimited("too many requests for this key", retry_after_s=round(retry, 3))


def _authenticate(
    request: Request, creds: HTTPAuthorizationCredentials | None, s: Session, now: datetime
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer":
        check_rate(request, f"ip:{request.client.host if request.client else '-'}")
        raise Unauthorized("missing Authorization: Bearer <key>", field="authorization")
    value = creds.credentials
    for kind in ("ak", "dk"):
        parsed = security.parse_secret(value, kind)
        if parsed is None:
            continue
        row_id, secret = parsed
        check_rate(request, row_id)
        if kind == "ak":
            admin = s.get(AdminKey, row_id)
            if admin is not None and admin.revoked_at is None and security.verify(secret, admin.key_hash):
                return Principal("admin", admin.id)
        else:
            device = s.get(Device, row_id)
            if device is not None and device.revoked_at is None and security.verify(secret, device.key_hash):
                if device.last_seen_at is None or now - device.last_seen_at >= LAST_SEEN_GRANULARITY:
                    device.last_seen_at = now
                return Principal("device", device.id, device)
        raise Unauthorized("unknown or revoked key", field="authorization")
    check_rate(request, f"ip:{request.client.host if request.client else '-'}")
    raise Unauthorized("not an ARTE key", field="authorization")


Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
SessionDep = Annotated[Session, Depends(get_session)]
NowDep = Annotated[datetime, Depends(get_now)]


def require_any(request: Request, creds: Creds, s: SessionDep, now: NowDep) -> Principal:
    return _authenticate(request, creds, s, now)


def require_admin(request: Request, creds: Creds, s: SessionDep, now: NowDep) -> Principal:
    p = _authenticate(request, creds, s, now)
    if p.kind != "admin":
        raise Forbidden("this endpoint needs the admin key", field="authorization")
    return p


def require_device(request: Request, creds: Creds, s: SessionDep, now: NowDep) -> Device:
    p = _authenticate(request, creds, s, now)
    if p.device is None:
        raise Forbidden("this endpoint needs a device key", field="authorization")
    return p.device


AdminDep = Annotated[Principal, Depends(require_admin)]
DeviceDep = Annotated[Device, Depends(require_device)]
AnyDep = Annotated[Principal, Depends(require_any)]
