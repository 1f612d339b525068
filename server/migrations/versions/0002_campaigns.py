"""Campaigns and lineage: campaigns + their rounds and events, teacher adapters; jobs get a retry time
(``not_before``), the campaign that queued them and a unique key; rounds and datasets name the job that
wrote them (a retried attempt finds its own row); cohorts and datasets name their adapter.

Revision ID: 0002_campaigns
Revises: 0001
Create Date: 2027-01-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_campaigns"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("cohort_id", sa.String(length=40), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("round_id", sa.String(length=40), nullable=True),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("parent_id", sa.String(length=40), nullable=True),
        sa.Column("n_pairs", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["cohort_id"], ["cohorts.id"]),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"]),
        sa.ForeignKeyConstraint(["parent_id"], ["adapters.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", name="uq_adapters_job_id"),
    )
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adapters_cohort_id"), ["cohort_id"], unique=False)

    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("cohort_id", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=True),
        sa.Column("round_no", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("round_id", sa.String(length=40), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["cohort_id"], ["cohorts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_campaigns_cohort_id"), ["cohort_id"], unique=False)

    op.create_table(
        "campaign_rounds",
        sa.Column("campaign_id", sa.String(length=40), nullable=False),
        sa.Column("round_no", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.String(length=40), nullable=True),
        sa.Column("parent_adapter_id", sa.String(length=40), nullable=True),
        sa.Column("adapter_id", sa.String(length=40), nullable=True),
        sa.Column("dataset_id", sa.String(length=40), nullable=True),
        sa.Column("n_reports", sa.Integer(), nullable=True),
        sa.Column("n_devices", sa.Integer(), nullable=True),
        sa.Column("align", sa.String(length=16), nullable=True),
        sa.Column("n_pairs", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("campaign_id", "round_no"),
    )

    op.create_table(
        "campaign_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("round_no", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "version", name="uq_campaign_events_version"),
    )
    with op.batch_alter_table("campaign_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_campaign_events_campaign_id"), ["campaign_id"], unique=False)

    with op.batch_alter_table("cohorts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adapter_id", sa.String(length=40), nullable=True))
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_id", sa.String(length=40), nullable=True))
        batch_op.create_unique_constraint("uq_rounds_job_id", ["job_id"])
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adapter_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.String(length=40), nullable=True))
        batch_op.create_unique_constraint("uq_datasets_job_id", ["job_id"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("campaign_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("key", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_campaign_id"), ["campaign_id"], unique=False)
        batch_op.create_unique_constraint("uq_jobs_key", ["key"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_jobs_key", type_="unique")
        batch_op.drop_index(batch_op.f("ix_jobs_campaign_id"))
        batch_op.drop_column("key")
        batch_op.drop_column("campaign_id")
        batch_op.drop_column("not_before")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_constraint("uq_datasets_job_id", type_="unique")
        batch_op.drop_column("job_id")
        batch_op.drop_column("adapter_id")
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_constraint("uq_rounds_job_id", type_="unique")
        batch_op.drop_column("job_id")
    with op.batch_alter_table("cohorts", schema=None) as batch_op:
        batch_op.drop_column("adapter_id")
    op.drop_table("campaign_events")
    op.drop_table("campaign_rounds")
    op.drop_table("campaigns")
    op.drop_table("adapters")
