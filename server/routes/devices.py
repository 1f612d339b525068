"""Devices: ``/devices/me`` for a device; listing, showing, revoking and per-device views for the admin."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from arte import wire
from server import fleet, reports
from server.deps import AdminDep, Creds, NowDep, SessionDep, unit_of_work
from server.errors import Forbidden
from server.openapi import raises
from server.routes.common import IdPath, IdQuery
from server.schemas import DeviceOut, MetricsOut, ReportOut

router = APIRouter(prefix=wire.API_PREFIX, tags=["devices"])


@router.get("/devices/me", response_model=wire.DeviceInfo, responses=raises(Forbidden))
async def me(request: Request, creds: Creds) -> wire.DeviceInfo:
    """The calling device."""

    def info(s: Any, who: Any, now: Any, body: Any) -> wire.DeviceInfo:
        device = who.device
        return wire.DeviceInfo(
            device_id=device.id,
            device_name=device.name,
            cohort_id=device.cohort_id,
            profile_id=device.profile_id,
            enrolled_at=device.enrolled_at.isoformat(),
            last_seen_at=device.last_seen_at.isoformat() if device.last_seen_at else None,
        )

    return await unit_of_work(request, creds, info, device_only=True)  # one thread hand-off


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(_: AdminDep, s: SessionDep, cohort_id: IdQuery = None) -> list[DeviceOut]:
    """Every device (of a cohort)."""
    return [fleet.device_out(d) for d in fleet.list_devices(s, cohort_id)]


@router.get("/devices/{device_id}", response_model=DeviceOut)
def show_device(device_id: IdPath, _: AdminDep, s: SessionDep) -> DeviceOut:
    return fleet.device_out(fleet.get_device(s, device_id))


@router.post("/devices/{device_id}/revoke", response_model=DeviceOut)
def revoke_device(
    device_id: IdPath, request: Request, _: AdminDep, s: SessionDep, now: NowDep
) -> DeviceOut:
    """Revoke a device's key; its stored reports and metrics are kept."""
    device = fleet.revoke_device(s, device_id, now)
    request.app.state.device_keys.forget(device_id)  # this process's fast path: at once (server.keycache)
    return fleet.device_out(device)


@router.get("/devices/{device_id}/reports", response_model=list[ReportOut])
def device_reports(device_id: IdPath, _: AdminDep, s: SessionDep) -> list[ReportOut]:
    """A device's reports with their per-draft counts (the per-device view for personalization)."""
    fleet.get_device(s, device_id)
    return [reports.report_out(s, r) for r in reports.list_reports(s, device_id=device_id)]


@router.get("/devices/{device_id}/metrics", response_model=list[MetricsOut])
def device_metrics(device_id: IdPath, _: AdminDep, s: SessionDep) -> list[MetricsOut]:
    fleet.get_device(s, device_id)
    return [reports.metrics_out(m) for m in reports.list_metrics(s, device_id=device_id)]
