"""What devices send: their reports of draft scores (read back) and their fine-tuning metrics.

Contract as in :mod:`server.fleet`: functions run inside the caller's transaction and raise
:mod:`server.errors` naming the field. A report is stored whole or not at all; it is idempotent per
(device, round): a re-send with the same idempotency key returns the stored receipt with
``duplicate=True``, another key for the same device and round is a conflict. Counts must be finite;
without local DP they must also be non-negative with ``n_correct <= n_items``. The declared privacy must
be at least as strict as the round's (422 naming ``privacy.*``, :func:`server.privacy.check_stricter`)
and the counts must be values the declared mechanism can produce (422 naming the score,
:func:`server.privacy.read_report`): under Laplace or Gaussian noise ``n_correct`` may be fractional,
negative or exceed ``n_items``; :mod:`server.aggregation` inverts the noise. Reports are stored by
:mod:`server.report_store` (one at a time or group-committed; :func:`submit_report` is re-exported here).
Metrics (before/after accuracy, kept or not) are idempotent per key like reports.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from arte import wire
from server.datasets import get_dataset
from server.errors import NotFound
from server.report_store import submit_report
from server.schemas import MetricsIn, MetricsOut, ReportOut
from server.tables import (
    Device,
    DeviceMetrics,
    Report,
    ReportScore,
    new_id,
)

__all__ = ["get_metrics", "get_report", "list_metrics", "list_reports", "metrics_out", "report_out", "submit_metrics", "submit_report"]


def get_report(s: Session, report_id: str, *, device_id: str | None = None) -> Report:
    """A report; with ``device_id`` (a device's view) another device's report is "not found"."""
    r = s.get(Report, report_id)
    if r is None or (device_id is not None and r.device_id != device_id):
        raise NotFound(f"no report {report_id}", field="report_id", report_id=report_id)
    return r


def list_reports(s: Session, *, device_id: str | None = None, round_id: str | None = None) -> list[Report]:
    q = sa.select(Report).order_by(Report.received_at, Report.id)
    if device_id:
        q = q.where(Report.device_id == device_id)
    if round_id:
        q = q.where(Report.round_id == round_id)
    return list(s.scalars(q))


def report_out(s: Session, r: Report) -> ReportOut:
    rows = s.scalars(
        sa.select(ReportScore).where(ReportScore.report_id == r.id).order_by(ReportScore.draft_id)
    )
    return ReportOut(
        report_id=r.id,
        round_id=r.round_id,
        device_id=r.device_id,
        mode=r.mode,
        privacy=r.privacy,
        agent_version=r.agent_version,
        received_at=r.received_at,
        scores=[{"draft_id": x.draft_id, "n_items": x.n_items, "n_correct": x.n_correct} for x in rows],
    )


def submit_metrics(s: Session, device: Device, body: MetricsIn, now: datetime) -> wire.MetricsReceipt:
    """Store a device's before/after accuracy for a dataset of its cohort (idempotent by key)."""
    existing = s.scalar(
        sa.select(DeviceMetrics).where(
            DeviceMetrics.device_id == device.id, DeviceMetrics.idempotency_key == body.idempotency_key
        )
    )
    if existing is not None:
        return wire.MetricsReceipt(
            metrics_id=existing.id,
            device_id=device.id,
            received_at=existing.received_at.isoformat(),
            duplicate=True,
        )
    get_dataset(s, body.dataset_id, cohort_id=device.cohort_id)
    m = DeviceMetrics(
        id=new_id("met"),
        device_id=device.id,
        dataset_id=body.dataset_id,
        idempotency_key=body.idempotency_key,
        adapter_version=body.adapter_version,
        before=body.before.model_dump(),
        after=body.after.model_dump(),
        kept=body.kept,
        train_seconds=body.train_seconds,
        agent_version=body.agent_version,
        received_at=now,
    )
    s.add(m)
    s.flush()
    return wire.MetricsReceipt(
        metrics_id=m.id, device_id=device.id, received_at=now.isoformat(), duplicate=False
    )


def get_metrics(s: Session, metrics_id: str, *, device_id: str | None = None) -> DeviceMetrics:
    m = s.get(DeviceMetrics, metrics_id)
    if m is None or (device_id is not None and m.device_id != device_id):
        raise NotFound(f"no metrics {metrics_id}", field="metrics_id", metrics_id=metrics_id)
    return m


def list_metrics(
    s: Session, *, device_id: str | None = None, cohort_id: str | None = None
) -> list[DeviceMetrics]:
    q = sa.select(DeviceMetrics).order_by(DeviceMetrics.received_at, DeviceMetrics.id)
    if device_id:
        q = q.where(DeviceMetrics.device_id == device_id)
    if cohort_id:
        q = q.join(Device, Device.id == DeviceMetrics.device_id).where(Device.cohort_id == cohort_id)
    return list(s.scalars(q))


def metrics_out(m: DeviceMetrics) -> MetricsOut:
    return MetricsOut(
        metrics_id=m.id,
        device_id=m.device_id,
        dataset_id=m.dataset_id,
        adapter_version=m.adapter_version,
        before=m.before,
        after=m.after,
        kept=m.kept,
        train_seconds=m.train_seconds,
        agent_version=m.agent_version,
        received_at=m.received_at,
    )
