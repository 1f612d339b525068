"""The server's tables (SQLAlchemy 2.x ORM), the same on SQLite and PostgreSQL.

Ids are opaque strings ``<prefix>_<32 hex>`` (:func:`new_id`). Secrets are never stored: keys and tokens
keep only ``sha256`` of their secret part (see :mod:`server.security`). Times are UTC and always come
back timezone-aware (:class:`UTCDateTime`, SQLite stores them naive). The schema itself is created by
the Alembic migrations in ``server/migrations``; this module must match the head revision (a test
compares them).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "UTCDateTime",
    "new_id",
    "utcnow",
    "AdminKey",
    "Task",
    "Cohort",
    "EnrollmentToken",
    "Device",
    "Round",
    "RoundDraft",
    "Report",
    "ReportScore",
    "Dataset",
    "DeviceMetrics",
    "Job",
    "JobLog",
    "Aggregate",
    "Adapter",
    "Campaign",
    "CampaignRound",
    "CampaignEvent",
    "ID_PATTERN",
]

ID_PATTERN = r"^[a-z]{3}_[0-9a-f]{32}$"


def new_id(prefix: str) -> str:
    """A fresh random id such as ``rnd_3f2a...`` (128 random bits)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp stored in UTC and returned timezone-aware on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class AdminKey(Base):
    __tablename__ = "admin_keys"
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    instruction: Mapped[str] = mapped_column(sa.Text)
    seeds: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Cohort(Base):
    __tablename__ = "cohorts"
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    task_id: Mapped[str] = mapped_column(sa.ForeignKey("tasks.id"))
    student_model: Mapped[str] = mapped_column(sa.String(500))
    profile_class: Mapped[str] = mapped_column(sa.String(200))
    privacy: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    min_devices: Mapped[int] = mapped_column(sa.Integer)
    adapter: Mapped[str | None] = mapped_column(sa.String(1000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # the adapters row of ``adapter`` (None before the first alignment; see server.lineage)
    adapter_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64))
    cohort_id: Mapped[str] = mapped_column(sa.ForeignKey("cohorts.id"))
    note: Mapped[str] = mapped_column(sa.String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    device_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(200))
    cohort_id: Mapped[str] = mapped_column(sa.ForeignKey("cohorts.id"), index=True)
    profile_id: Mapped[str] = mapped_column(sa.String(200))
    hardware: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    agent_version: Mapped[str] = mapped_column(sa.String(100))
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (sa.UniqueConstraint("job_id", name="uq_rounds_job_id"),)
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    cohort_id: Mapped[str] = mapped_column(sa.ForeignKey("cohorts.id"), index=True)
    state: Mapped[str] = mapped_column(sa.String(16))  # open | closed
    mode: Mapped[str] = mapped_column(sa.String(16))
    max_new_tokens: Mapped[int] = mapped_column(sa.Integer)
    min_items: Mapped[int] = mapped_column(sa.Integer)
    privacy: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    n_drafts: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closes_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the elicit job that opened it: a retried attempt finds its round instead of opening a second one
    job_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)


class RoundDraft(Base):
    __tablename__ = "round_drafts"
    round_id: Mapped[str] = mapped_column(sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True)
    draft_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    position: Mapped[int] = mapped_column(sa.Integer)
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON)


class Report(Base):
    __tablename__ = "reports"
    __table_args__ = (sa.UniqueConstraint("device_id", "round_id", name="uq_reports_device_round"),)
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    round_id: Mapped[str] = mapped_column(sa.ForeignKey("rounds.id"), index=True)
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(sa.String(200))
    mode: Mapped[str] = mapped_column(sa.String(16))
    privacy: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    agent_version: Mapped[str] = mapped_column(sa.String(100))
    n_scores: Mapped[int] = mapped_column(sa.Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReportScore(Base):
    __tablename__ = "report_scores"
    report_id: Mapped[str] = mapped_column(sa.ForeignKey("reports.id", ondelete="CASCADE"), primary_key=True)
    draft_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    n_items: Mapped[float] = mapped_column(sa.Float)
    n_correct: Mapped[float] = mapped_column(sa.Float)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (sa.UniqueConstraint("job_id", name="uq_datasets_job_id"),)
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    cohort_id: Mapped[str] = mapped_column(sa.ForeignKey("cohorts.id"), index=True)
    round_id: Mapped[str | None] = mapped_column(sa.ForeignKey("rounds.id"), nullable=True)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    n_examples: Mapped[int] = mapped_column(sa.Integer)
    content: Mapped[bytes] = mapped_column(sa.LargeBinary, deferred=True)
    teacher: Mapped[str] = mapped_column(sa.String(500))
    adapter: Mapped[str | None] = mapped_column(sa.String(1000), nullable=True)
    signature: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    counts: Mapped[dict[str, int]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    adapter_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)  # the teacher's adapter
    job_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)  # the tailor job that wrote it


class DeviceMetrics(Base):
    __tablename__ = "device_metrics"
    __table_args__ = (sa.UniqueConstraint("device_id", "idempotency_key", name="uq_metrics_device_key"),)
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.ForeignKey("devices.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("datasets.id"))
    idempotency_key: Mapped[str] = mapped_column(sa.String(200))
    adapter_version: Mapped[str] = mapped_column(sa.String(200))
    before: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    after: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    kept: Mapped[bool] = mapped_column(sa.Boolean)
    train_seconds: Mapped[float] = mapped_column(sa.Float)
    agent_version: Mapped[str] = mapped_column(sa.String(100))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_state_created", "state", "created_at"),
        sa.UniqueConstraint("key", name="uq_jobs_key"),
    )
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    cohort_id: Mapped[str | None] = mapped_column(sa.ForeignKey("cohorts.id"), nullable=True)
    round_id: Mapped[str | None] = mapped_column(sa.ForeignKey("rounds.id"), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    state: Mapped[str] = mapped_column(sa.String(16))  # queued running succeeded failed cancelled
    attempts: Mapped[int] = mapped_column(sa.Integer)
    max_attempts: Mapped[int] = mapped_column(sa.Integer)
    worker_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    progress: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(sa.Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # retry backoff: a queued job is not claimed before this time (None: at once)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the campaign that queued it, and a unique key per campaign transition (a step never queued twice)
    campaign_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True, index=True)
    key: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)


class JobLog(Base):
    __tablename__ = "job_logs"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(sa.Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    level: Mapped[str] = mapped_column(sa.String(16))
    message: Mapped[str] = mapped_column(sa.Text)


class Aggregate(Base):
    __tablename__ = "aggregates"
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    cohort_id: Mapped[str] = mapped_column(sa.ForeignKey("cohorts.id"), index=True)
    round_id: Mapped[str] = mapped_column(sa.ForeignKey("rounds.id"), index=True)
    n_devices: Mapped[int] = mapped_column(sa.Integer)
    min_devices: Mapped[int] = mapped_column(sa.Integer)
    drafts: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    job_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Adapter(Base):
    """A teacher adapter of a cohort (written by an align job), with its lineage."""

    __tablename__ = "adapters"
    __table_args__ = (sa.UniqueConstraint("job_id", name="uq_adapters_job_id"),)
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    cohort_id: Mapped[str] = mapped_column(sa.ForeignKey("cohorts.id"), index=True)
    path: Mapped[str] = mapped_column(sa.String(1000))
    round_id: Mapped[str | None] = mapped_column(sa.ForeignKey("rounds.id"), nullable=True)
    job_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    parent_id: Mapped[str | None] = mapped_column(sa.ForeignKey("adapters.id"), nullable=True)
    n_pairs: Mapped[int] = mapped_column(sa.Integer)
    summary: Mapped[dict[str, Any]] = mapped_column(sa.JSON)  # the align job's training summary
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Campaign(Base):
    """A cohort's automatic rounds: its policy and where the state machine is (see server.driver)."""

    __tablename__ = "campaigns"
    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    cohort_id: Mapped[str] = mapped_column(sa.ForeignKey("cohorts.id"), index=True)
    state: Mapped[str] = mapped_column(sa.String(16))  # active paused stopped completed
    policy: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    rounds: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)  # None: until stopped
    round_no: Mapped[int] = mapped_column(sa.Integer)
    step: Mapped[str] = mapped_column(sa.String(16))  # elicit collect aggregate align tailor
    job_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    round_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    version: Mapped[int] = mapped_column(sa.Integer)
    failures: Mapped[int] = mapped_column(sa.Integer)
    reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CampaignRound(Base):
    """One round of a campaign and its lineage: the round, the adapter it started from, what it produced."""

    __tablename__ = "campaign_rounds"
    campaign_id: Mapped[str] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    round_no: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    round_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    parent_adapter_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    adapter_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    dataset_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    n_reports: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    n_devices: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    align: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)  # pairs no_signal below_k
    n_pairs: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CampaignEvent(Base):
    """Every transition of a campaign, numbered by the version it produced (unique: none happens twice)."""

    __tablename__ = "campaign_events"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "version", name="uq_campaign_events_version"),)
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(sa.Integer)
    round_no: Mapped[int] = mapped_column(sa.Integer)
    step: Mapped[str] = mapped_column(sa.String(16))
    event: Mapped[str] = mapped_column(sa.String(32))
    message: Mapped[str] = mapped_column(sa.Text)
    job_id: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
