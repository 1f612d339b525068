"""Campaigns: a cohort's personalization that runs itself, round after round (the rows and the operator's
actions; :mod:`server.driver` advances them).

A campaign holds a policy (:class:`CampaignPolicy`: drafts per round, the closing rule, the alignment and
tailoring settings, the stop rule) and where it is: ``state`` (``active``, ``paused``, ``stopped``,
``completed``), ``round_no`` and ``step`` (:data:`STEPS`), the job of the step in flight, and ``version``,
which every transition increments and records as a :class:`~server.tables.CampaignEvent` (unique per
campaign and version, so a transition cannot be recorded twice). A cohort has at most one campaign that is
active or paused. Functions take the caller's session (one transaction) and ``now``, like
:mod:`server.fleet`; the response models live here because only campaigns use them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from arte.dpo import AlignConfig
from arte.elicit import ElicitConfig
from arte.errors import ConfigError
from arte.pairs import PairConfig
from arte.scoring import DEFAULT_MODE, MODES
from arte.tailor import TailorConfig
from server import fleet, queue
from server.errors import Conflict, NotFound
from server.lineage import reward_accuracy
from server.schemas import Id, JsonObject
from server.tables import (
    Adapter,
    Campaign,
    CampaignEvent,
    CampaignRound,
    Cohort,
    Dataset,
    DeviceMetrics,
    Job,
    Report,
    new_id,
)

__all__ = [
    "STATES",
    "STEPS",
    "LIVE",
    "CampaignPolicy",
    "CampaignIn",
    "CampaignRoundOut",
    "CampaignEventOut",
    "CampaignOut",
    "create_campaign",
    "get_campaign",
    "list_campaigns",
    "pause",
    "resume",
    "stop",
    "record",
    "campaign_out",
    "round_figures",
]

STATES = ("active", "paused", "stopped", "completed")
LIVE = ("active", "paused")   # a cohort has at most one campaign in these states
STEPS = ("elicit", "collect", "aggregate", "align", "tailor")
_CONFIGS = {"drafts": ElicitConfig, "align": AlignConfig, "pairs": PairConfig, "tailor": TailorConfig}


class CampaignPolicy(BaseModel):
    """How each round of a campaign runs. The four config objects are the keyword arguments of
    :class:`arte.elicit.ElicitConfig` (``drafts``: questions and rationale styles per round),
    :class:`arte.dpo.AlignConfig`, :class:`arte.pairs.PairConfig` and :class:`arte.tailor.TailorConfig`;
    they are checked when the campaign is created."""

    model_config = ConfigDict(extra="forbid", strict=True)   # as every request body (server.schemas._In)

    drafts: JsonObject = Field(default_factory=dict, description="ElicitConfig: n_questions, styles, ...")
    mode: Literal[MODES] = DEFAULT_MODE  # type: ignore[valid-type]
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 256
    min_items: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=10, description="Fewest private items a device must score to report."
    )
    close_devices: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="Close the round when this many devices reported (default: the cohort's k)."
    )
    deadline_s: Annotated[float, Field(gt=0, le=365 * 24 * 3600)] | None = Field(
        default=None, description="Close the round this long after it opened, whoever reported."
    )
    align: JsonObject = Field(default_factory=dict, description="AlignConfig (DPO + LoRA).")
    pairs: JsonObject = Field(default_factory=dict, description="PairConfig (how scores become pairs).")
    tailor: JsonObject = Field(default_factory=dict, description="TailorConfig (the tailored dataset).")
    elicit_with_adapter: bool = Field(
        default=True, description="Each round's drafts come from the teacher with the cohort's newest adapter."
    )
    max_failures: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="A step whose jobs fail this many times in a row pauses the campaign."
    )
    job_max_attempts: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None, description="Attempts of each job (default: the server's job_max_attempts)."
    )
    stop_if_kept_below: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None,
        description="Stop when fewer than this share of the devices that trained on the previous round's "
        "dataset kept the adapter.",
    )
    min_metrics: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=1, description="Device metrics the stop rule needs before it judges."
    )

    @model_validator(mode="after")
    def _configs(self) -> CampaignPolicy:
        for name, cls in _CONFIGS.items():
            try:
                cls(**getattr(self, name))
            except ConfigError as e:
                raise ValueError(f"{name}.{e.field}: {e.problem}") from None
            except TypeError as e:
                raise ValueError(f"{name}: {e}") from None
        return self


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cohort_id: Id
    rounds: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        description="Rounds to run; null runs until stopped (or until the stop rule fires)."
    )
    policy: CampaignPolicy = Field(default_factory=CampaignPolicy)


class CampaignRoundOut(BaseModel):
    """One round of a campaign: its lineage and what it measured."""

    round_no: int
    round_id: str | None
    done: bool
    parent_adapter_id: str | None = Field(description="The cohort's adapter when the round started.")
    adapter_id: str | None = Field(description="The adapter its align job wrote (None: no new adapter).")
    align: str | None = Field(description="pairs, no_signal or below_k (None: not reached yet).")
    n_pairs: int | None
    reward_accuracy_before: float | None = Field(description="DPO reward accuracy on held-out pairs, before.")
    reward_accuracy_after: float | None
    dataset_id: str | None
    dataset_examples: int | None
    dataset_bytes: int | None
    n_reports: int = Field(description="Reports stored for the round (now).")
    n_devices: int | None = Field(description="Devices in the round's aggregate.")
    n_metrics: int = Field(description="Devices that trained on the round's dataset and reported.")
    n_kept: int = Field(description="Of those, devices that kept the new adapter.")
    before_zero_shot: float | None = Field(description="Mean holdout accuracy of those devices before.")
    after_zero_shot: float | None
    before_three_shot: float | None
    after_three_shot: float | None
    started_at: datetime
    closed_at: datetime | None
    finished_at: datetime | None


class CampaignEventOut(BaseModel):
    version: int
    round_no: int
    step: str
    event: str
    message: str
    job_id: str | None
    at: datetime


class CampaignOut(BaseModel):
    campaign_id: str
    cohort_id: str
    state: Literal[STATES]  # type: ignore[valid-type]
    rounds: int | None
    round_no: int
    step: str
    job_id: str | None = Field(description="The job of the step in flight.")
    round_id: str | None = Field(description="The round of round_no (once elicited).")
    version: int
    failures: int = Field(description="Failed jobs of the current step in a row.")
    reason: str | None = Field(description="Why the campaign is paused or stopped.")
    policy: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    history: list[CampaignRoundOut]
    events: list[CampaignEventOut] | None = Field(default=None, description="Newest transitions (show only).")


# --- rows -------------------------------------------------------------------------------------------------


def record(s: Session, c: Campaign, event: str, message: str, now: datetime, job_id: str | None = None, *,
           step: str | None = None, round_no: int | None = None) -> str:
    """Count one transition: bump ``version`` and append its event (unique per campaign and version);
    ``step`` and ``round_no``: what the transition finished (default: where the campaign is now)."""
    c.version += 1
    c.updated_at = now
    s.add(CampaignEvent(campaign_id=c.id, version=c.version, round_no=round_no or c.round_no, step=step or c.step,
                        event=event, message=message, job_id=job_id, at=now))
    s.flush()
    return f"{c.id} v{c.version} {event}: {message}"


def create_campaign(s: Session, body: CampaignIn, now: datetime) -> Campaign:
    """A new active campaign for the cohort (409 when the cohort has an active or paused one)."""
    cohort = s.scalar(sa.select(Cohort).where(Cohort.id == body.cohort_id).with_for_update())
    if cohort is None:
        raise NotFound(f"no cohort {body.cohort_id}", field="cohort_id", cohort_id=body.cohort_id)
    live = s.scalar(sa.select(Campaign.id).where(Campaign.cohort_id == cohort.id, Campaign.state.in_(LIVE)))
    if live is not None:
        raise Conflict(f"cohort {cohort.id} already has campaign {live}; stop it first", field="cohort_id",
                       campaign_id=live)
    policy = body.policy.model_dump()
    if policy["close_devices"] is None:
        policy["close_devices"] = cohort.min_devices
    c = Campaign(id=new_id("cmp"), cohort_id=cohort.id, state="active", policy=policy, rounds=body.rounds,
                 round_no=1, step="elicit", job_id=None, round_id=None, version=0, failures=0, reason=None,
                 created_at=now, updated_at=now, finished_at=None)
    s.add(c)
    s.flush()
    record(s, c, "created", f"{body.rounds or 'unlimited'} rounds; a round closes when "
           f"{policy['close_devices']} devices reported"
           + (f" or {policy['deadline_s']:g} s after it opened" if policy["deadline_s"] else ""), now)
    return c


def get_campaign(s: Session, campaign_id: str, *, lock: bool = False) -> Campaign:
    q = sa.select(Campaign).where(Campaign.id == campaign_id)
    c = s.scalar(q.with_for_update() if lock else q)
    if c is None:
        raise NotFound(f"no campaign {campaign_id}", field="campaign_id", campaign_id=campaign_id)
    return c


def list_campaigns(s: Session, *, cohort_id: str | None = None, state: str | None = None) -> list[Campaign]:
    q = sa.select(Campaign).order_by(Campaign.created_at, Campaign.id)
    if cohort_id:
        q = q.where(Campaign.cohort_id == cohort_id)
    if state:
        q = q.where(Campaign.state == state)
    return list(s.scalars(q))


def pause(s: Session, campaign_id: str, now: datetime, reason: str = "paused by the operator") -> Campaign:
    """Pause an active campaign (its job in flight finishes; the driver waits). Pausing a paused one
    changes nothing; a finished one is a conflict."""
    c = get_campaign(s, campaign_id, lock=True)
    if c.state not in LIVE:
        raise Conflict(f"campaign {c.id} is {c.state}", field="campaign_id", state=c.state)
    if c.state == "active":
        c.state, c.reason = "paused", reason
        record(s, c, "paused", reason, now)
    return c


def resume(s: Session, campaign_id: str, now: datetime) -> Campaign:
    """Resume a paused campaign where it stopped; its failure count starts again from zero."""
    c = get_campaign(s, campaign_id, lock=True)
    if c.state not in LIVE:
        raise Conflict(f"campaign {c.id} is {c.state}", field="campaign_id", state=c.state)
    if c.state == "paused":
        c.state, c.reason, c.failures = "active", None, 0
        record(s, c, "resumed", f"resumed at round {c.round_no}, step {c.step}", now)
    return c


def stop(s: Session, campaign_id: str, now: datetime, reason: str = "stopped by the operator") -> Campaign:
    """Stop a campaign for good; its queued or running job is cancelled and its collecting round closed. Stopping a stopped one changes
    nothing; a completed one is a conflict."""
    c = get_campaign(s, campaign_id, lock=True)
    if c.state == "completed":
        raise Conflict(f"campaign {c.id} is completed", field="campaign_id", state=c.state)
    if c.state == "stopped":
        return c
    if c.job_id is not None:
        job = s.get(Job, c.job_id)
        if job is not None and job.state not in queue.TERMINAL:
            queue.cancel(s, job.id, now)
    if c.step == "collect" and c.round_id is not None:
        fleet.close_round(s, c.round_id, now)
    c.state, c.reason, c.finished_at = "stopped", reason, now
    record(s, c, "stopped", reason, now, c.job_id)
    return c


# --- output -----------------------------------------------------------------------------------------------


def _mean(values: list[float | None]) -> float | None:
    xs = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(xs) / len(xs) if xs else None


def round_figures(s: Session, rows: list[CampaignRound]) -> list[CampaignRoundOut]:
    """Each round's lineage and measurements, read with one query per table."""
    round_ids = [r.round_id for r in rows if r.round_id]
    dataset_ids = [r.dataset_id for r in rows if r.dataset_id]
    adapter_ids = [r.adapter_id for r in rows if r.adapter_id]
    reports = dict(s.execute(
        sa.select(Report.round_id, sa.func.count()).where(Report.round_id.in_(round_ids)).group_by(Report.round_id)
    ).all()) if round_ids else {}
    datasets = {d.id: d for d in s.execute(
        sa.select(Dataset.id, Dataset.n_examples, Dataset.size).where(Dataset.id.in_(dataset_ids))
    )} if dataset_ids else {}
    adapters = {a.id: a for a in s.scalars(sa.select(Adapter).where(Adapter.id.in_(adapter_ids)))} \
        if adapter_ids else {}
    metrics: dict[str, list[Any]] = {}
    if dataset_ids:
        # the newest metrics of each device per dataset (a device trains on a dataset once; a re-train counts once)
        for m in s.execute(
            sa.select(DeviceMetrics.dataset_id, DeviceMetrics.device_id, DeviceMetrics.kept, DeviceMetrics.before,
                      DeviceMetrics.after)
            .where(DeviceMetrics.dataset_id.in_(dataset_ids))
            .order_by(DeviceMetrics.received_at, DeviceMetrics.id)
        ):
            per = metrics.setdefault(m.dataset_id, [])
            per[:] = [x for x in per if x.device_id != m.device_id] + [m]
    out = []
    for r in rows:
        ms = metrics.get(r.dataset_id or "", [])
        ds = datasets.get(r.dataset_id or "")
        ad = adapters.get(r.adapter_id or "")
        out.append(CampaignRoundOut(
            round_no=r.round_no, round_id=r.round_id, done=r.finished_at is not None,
            parent_adapter_id=r.parent_adapter_id, adapter_id=r.adapter_id, align=r.align, n_pairs=r.n_pairs,
            reward_accuracy_before=reward_accuracy(ad.summary, "before") if ad else None,
            reward_accuracy_after=reward_accuracy(ad.summary, "after") if ad else None,
            dataset_id=r.dataset_id, dataset_examples=ds.n_examples if ds else None,
            dataset_bytes=ds.size if ds else None, n_reports=int(reports.get(r.round_id, 0)),
            n_devices=r.n_devices, n_metrics=len(ms), n_kept=sum(1 for m in ms if m.kept),
            before_zero_shot=_mean([m.before.get("zero_shot") for m in ms]),
            after_zero_shot=_mean([m.after.get("zero_shot") for m in ms]),
            before_three_shot=_mean([m.before.get("three_shot") for m in ms]),
            after_three_shot=_mean([m.after.get("three_shot") for m in ms]),
            started_at=r.started_at, closed_at=r.closed_at, finished_at=r.finished_at))
    return out


def campaign_out(s: Session, c: Campaign, *, events: int = 0) -> CampaignOut:
    """The campaign with its rounds (and its newest ``events`` transitions, oldest first)."""
    rows = list(s.scalars(sa.select(CampaignRound).where(CampaignRound.campaign_id == c.id)
                          .order_by(CampaignRound.round_no)))
    evs = None
    if events:
        q = (sa.select(CampaignEvent).where(CampaignEvent.campaign_id == c.id)
             .order_by(CampaignEvent.version.desc()).limit(events))
        evs = [CampaignEventOut(version=e.version, round_no=e.round_no, step=e.step, event=e.event,
                                message=e.message, job_id=e.job_id, at=e.at) for e in s.scalars(q)][::-1]
    return CampaignOut(
        campaign_id=c.id, cohort_id=c.cohort_id, state=c.state,  # type: ignore[arg-type]
        rounds=c.rounds, round_no=c.round_no, step=c.step, job_id=c.job_id, round_id=c.round_id,
        version=c.version, failures=c.failures, reason=c.reason, policy=c.policy, created_at=c.created_at,
        updated_at=c.updated_at, finished_at=c.finished_at, history=round_figures(s, rows), events=evs)


def check_cohort(s: Session, cohort_id: str | None) -> None:
    """404 naming ``cohort_id`` for an unknown cohort (list filters)."""
    if cohort_id is not None:
        fleet.get_cohort(s, cohort_id)
