"""What devices send and receive: reports, metrics, datasets; and the cohort aggregates of reports.

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

Datasets are JSONL bytes, content-addressed by sha256 (also their ETag). With a signing key, the
manifest's ``signature`` is ``hmac-sha256:<hex>`` of the sha256 hex digest under that key (devices
configured with the same key verify it; HMAC because the server has no asymmetric-crypto dependency).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from arte import wire
from server import aggregation, fleet
from server.errors import BadRequest, NotFound
from server.models import (
    Aggregate,
    Cohort,
    Dataset,
    Device,
    DeviceMetrics,
    Report,
    ReportScore,
    Round,
    new_id,
)
from server.report_store import submit_report
from server.schemas import AggregateOut, DatasetIn, MetricsIn, MetricsOut, ReportOut

__all__ = [
    "submit_report",
    "report_out",
    "get_report",
    "list_reports",
    "submit_metrics",
    "metrics_out",
    "get_metrics",
    "list_metrics",
    "create_dataset",
    "latest_manifest",
    "get_dataset",
    "list_datasets",
    "manifest",
    "dataset_content",
    "compute_aggregate",
    "per_device_aggregates",
    "store_aggregate",
    "latest_aggregate",
    "aggregate_out",
    "stored_aggregate_out",
    "sign",
]


# --- reports ------------------------------------------------------------------------------------------


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


# --- metrics ------------------------------------------------------------------------------------------


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


# --- datasets -----------------------------------------------------------------------------------------


def sign(sha256_hex: str, key_hex: str) -> str:
    """``hmac-sha256:<hex>`` of the dataset's sha256 hex digest under the fleet signing key."""
    return "hmac-sha256:" + hmac.new(bytes.fromhex(key_hex), sha256_hex.encode(), hashlib.sha256).hexdigest()


def create_dataset(s: Session, body: DatasetIn, now: datetime, signing_key_hex: str | None) -> Dataset:
    """Store a JSONL dataset for a cohort; every non-empty line must be a JSON object."""
    fleet.get_cohort(s, body.cohort_id)
    if body.round_id is not None:
        rnd = fleet.get_round(s, body.round_id)
        if rnd.cohort_id != body.cohort_id:
            raise BadRequest(f"round {rnd.id} belongs to another cohort", field="round_id")
    n = 0
    for lineno, line in enumerate(body.content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadRequest(f"line {lineno} is not JSON: {e.msg}", field="content", line=lineno) from None
        if not isinstance(obj, dict):
            raise BadRequest(f"line {lineno} is not a JSON object", field="content", line=lineno)
        n += 1
    data = body.content.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    ds = Dataset(
        id=new_id("dat"),
        cohort_id=body.cohort_id,
        round_id=body.round_id,
        sha256=digest,
        size=len(data),
        n_examples=n,
        content=data,
        teacher=body.teacher,
        adapter=body.adapter,
        signature=sign(digest, signing_key_hex) if signing_key_hex else None,
        counts=dict(body.counts),
        created_at=now,
    )
    s.add(ds)
    s.flush()
    return ds


def get_dataset(s: Session, dataset_id: str, *, cohort_id: str | None = None) -> Dataset:
    ds = s.get(Dataset, dataset_id)
    if ds is None or (cohort_id is not None and ds.cohort_id != cohort_id):
        raise NotFound(f"no dataset {dataset_id}", field="dataset_id", dataset_id=dataset_id)
    return ds


_MANIFEST_COLUMNS = sa.select(
    Dataset.id,
    Dataset.cohort_id,
    Dataset.round_id,
    Dataset.sha256,
    Dataset.size,
    Dataset.n_examples,
    Dataset.created_at,
    Dataset.teacher,
    Dataset.adapter,
    Dataset.signature,
    Dataset.counts,
)


def latest_manifest(conn: Session | sa.Connection, cohort_id: str) -> wire.DatasetManifest:
    """The manifest of the cohort's newest dataset (404 when none), read in one statement by a session
    or a plain (read-only) connection."""
    row = conn.execute(
        _MANIFEST_COLUMNS.where(Dataset.cohort_id == cohort_id)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc())
        .limit(1)
    ).first()
    if row is None:
        raise NotFound("the cohort has no dataset yet", cohort_id=cohort_id)
    return manifest(row)


def list_datasets(s: Session, cohort_id: str | None = None) -> list[Dataset]:
    q = sa.select(Dataset).order_by(Dataset.created_at, Dataset.id)
    if cohort_id:
        q = q.where(Dataset.cohort_id == cohort_id)
    return list(s.scalars(q))


def manifest(ds: Dataset | sa.Row[Any]) -> wire.DatasetManifest:
    return wire.DatasetManifest(
        dataset_id=ds.id,
        cohort_id=ds.cohort_id,
        round_id=ds.round_id,
        sha256=ds.sha256,
        size=ds.size,
        n_examples=ds.n_examples,
        created_at=ds.created_at.isoformat(),
        teacher=ds.teacher,
        adapter=ds.adapter,
        signature=ds.signature,
        counts=dict(ds.counts),
    )


# Dataset content never changes (its id and sha256 name it), so each process keeps the most recently
# served contents up to a byte budget instead of reading the blob from the database per download.
_CONTENT: dict[str, bytes] = {}
_CONTENT_MAX_BYTES = 64 << 20
_content_lock = threading.Lock()


def dataset_content(s: Session, ds: Dataset) -> bytes:
    """The dataset's JSONL bytes (from the process cache when they were served before)."""
    data = _CONTENT.get(ds.id)
    if data is not None:
        return data
    data = s.scalar(sa.select(Dataset.content).where(Dataset.id == ds.id)) or b""
    if len(data) <= _CONTENT_MAX_BYTES // 4:
        with _content_lock:
            while _CONTENT and sum(map(len, _CONTENT.values())) + len(data) > _CONTENT_MAX_BYTES:
                del _CONTENT[next(iter(_CONTENT))]
            _CONTENT[ds.id] = data
    return data


# --- aggregates ---------------------------------------------------------------------------------------


def _score_rows(s: Session, rnd: Round) -> list[aggregation.ScoreRow]:
    q = (
        sa.select(
            Report.device_id, ReportScore.draft_id, ReportScore.n_items, ReportScore.n_correct, Report.privacy
        )
        .join(ReportScore, ReportScore.report_id == Report.id)
        .where(Report.round_id == rnd.id)
        .order_by(Report.received_at, Report.id, ReportScore.draft_id)
    )
    return [
        aggregation.ScoreRow(device_id=d, draft_id=k, n_items=n, n_correct=c, privacy=p)
        for d, k, n, c, p in s.execute(q)
    ]


def compute_aggregate(s: Session, rnd: Round) -> aggregation.CohortAggregate:
    """The aggregate of every report stored for ``rnd`` (k is the cohort's ``min_devices``)."""
    cohort = s.get(Cohort, rnd.cohort_id)
    assert cohort is not None
    return aggregation.aggregate(_score_rows(s, rnd), cohort.min_devices)


def per_device_aggregates(s: Session, rnd: Round) -> dict[str, aggregation.CohortAggregate]:
    """Each device's own per-draft scores for ``rnd`` (the admin's personalization view)."""
    by_device: dict[str, list[aggregation.ScoreRow]] = {}
    for row in _score_rows(s, rnd):
        by_device.setdefault(row.device_id, []).append(row)
    return {d: aggregation.aggregate(rows, 1) for d, rows in by_device.items()}


def store_aggregate(
    s: Session, rnd: Round, agg: aggregation.CohortAggregate, now: datetime, job_id: str | None = None
) -> Aggregate:
    row = Aggregate(
        id=new_id("agg"),
        cohort_id=rnd.cohort_id,
        round_id=rnd.id,
        n_devices=agg.n_devices,
        min_devices=agg.min_devices,
        drafts={k: v.to_dict() for k, v in agg.drafts.items()},
        job_id=job_id,
        computed_at=now,
    )
    s.add(row)
    s.flush()
    return row


def latest_aggregate(s: Session, round_id: str) -> Aggregate | None:
    return s.scalar(
        sa.select(Aggregate)
        .where(Aggregate.round_id == round_id)
        .order_by(Aggregate.computed_at.desc(), Aggregate.id.desc())
        .limit(1)
    )


def aggregate_out(
    rnd: Round, agg: aggregation.CohortAggregate, computed_at: datetime, job_id: str | None = None
) -> AggregateOut:
    return AggregateOut(
        cohort_id=rnd.cohort_id,
        round_id=rnd.id,
        n_devices=agg.n_devices,
        min_devices=agg.min_devices,
        meets_k=agg.meets_k,
        may_align=agg.may_align,
        reason=agg.reason,
        drafts={k: v.to_dict() for k, v in agg.drafts.items()},
        excluded=agg.excluded,
        computed_at=computed_at,
        job_id=job_id,
    )


def stored_aggregate_out(rnd: Round, row: Aggregate) -> AggregateOut:
    """A stored aggregate; ``may_align`` and ``eligible`` are derived from its stored counts."""
    may_align, reason, eligible = aggregation.stored_decision(row.n_devices, row.min_devices, row.drafts)
    return AggregateOut(
        cohort_id=rnd.cohort_id,
        round_id=rnd.id,
        n_devices=row.n_devices,
        min_devices=row.min_devices,
        meets_k=row.n_devices >= row.min_devices,
        may_align=may_align,
        reason=reason,
        drafts={k: {**v, "eligible": k in eligible} for k, v in row.drafts.items()},
        computed_at=row.computed_at,
        job_id=row.job_id,
    )
