"""Device metrics: before/after accuracy of a fine-tune and whether the adapter was kept."""

from __future__ import annotations

from fastapi import APIRouter

from arte import wire
from server import reports
from server.deps import AnyDep, DeviceDep, NowDep, SessionDep
from server.errors import NotFound
from server.openapi import raises
from server.routes.common import IdPath, IdQuery
from server.schemas import MetricsIn, MetricsOut

router = APIRouter(prefix=wire.API_PREFIX, tags=["metrics"])


@router.post(
    "/metrics", response_model=wire.MetricsReceipt, responses=raises((NotFound, "No such dataset of the cohort."))
)
def submit(body: MetricsIn, device: DeviceDep, s: SessionDep, now: NowDep) -> wire.MetricsReceipt:
    """Store the device's metrics for a dataset of its cohort (idempotent by key)."""
    return reports.submit_metrics(s, device, body, now)


@router.get("/metrics", response_model=list[MetricsOut])
def list_metrics(
    who: AnyDep, s: SessionDep, device_id: IdQuery = None, cohort_id: IdQuery = None
) -> list[MetricsOut]:
    """Metrics: a device gets only its own; the admin may filter by device or cohort."""
    if who.device is not None:
        device_id, cohort_id = who.device.id, None
    return [reports.metrics_out(m) for m in reports.list_metrics(s, device_id=device_id, cohort_id=cohort_id)]


@router.get("/metrics/{metrics_id}", response_model=MetricsOut)
def show(metrics_id: IdPath, who: AnyDep, s: SessionDep) -> MetricsOut:
    return reports.metrics_out(
        reports.get_metrics(s, metrics_id, device_id=who.device.id if who.device else None)
    )
