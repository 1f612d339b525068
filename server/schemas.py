"""Request and response models of the HTTP API (pydantic: validation and the OpenAPI schema).

Device-facing *responses* are the wire dataclasses of :mod:`arte.wire` themselves (FastAPI documents
them), so the agent's ``from_wire`` always reads what the server writes; device-facing *requests* are
pydantic mirrors of those dataclasses with the limits the wire cannot express: finite numbers, counts
that add up, bounded lengths, no NUL characters or lone surrogates (which SQLite/PostgreSQL could not
store). Every model forbids unknown fields, like ``from_wire``. Admin resources are defined only here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from arte.privacy import MECHANISMS
from arte.scoring import DEFAULT_MODE, MODES
from server.tables import ID_PATTERN

__all__ = [
    "Id",
    "Name",
    "Text",
    "JsonObject",
    "PrivacyIn",
    "EnrollIn",
    "DraftScoreIn",
    "ReportIn",
    "AccuracyIn",
    "MetricsIn",
    "SeedExample",
    "TaskIn",
    "TaskOut",
    "CohortIn",
    "CohortOut",
    "TokenIn",
    "TokenOut",
    "TokenInfo",
    "RoundIn",
    "RoundOut",
    "ReportOut",
    "DatasetIn",
    "MetricsOut",
    "JobIn",
    "JobOut",
    "JobLogOut",
    "DraftEstimateOut",
    "AggregateOut",
    "DeviceOut",
    "MAX_COUNT",
    "JOB_KINDS",
    "JOB_STATES",
    "JOB_LIVE",
    "JobKind",
    "JobState",
    "MODES",
    "MECHANISMS",
]

MAX_COUNT = 1e9  # no device scores a billion items; noised counts stay far below this too
JOB_KINDS = ("aggregate", "elicit", "align", "tailor")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_LIVE = ("queued", "running")   # a job in these states may still run
JobKind = Literal[JOB_KINDS]  # type: ignore[valid-type]
JobState = Literal[JOB_STATES]  # type: ignore[valid-type]


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _storable_json(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ValueError("nested more than 32 levels deep")
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError("must not contain NaN or infinite numbers")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63 - 1:
        raise ValueError("integers must fit in 64 bits")
    if isinstance(value, list):
        return [_storable_json(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_storable(k): _storable_json(v, depth + 1) for k, v in value.items()}
    return value


Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=200, strip_whitespace=False), AfterValidator(_storable)
]
ShortText = Annotated[str, StringConstraints(max_length=200), AfterValidator(_storable)]
Text = Annotated[str, StringConstraints(max_length=100_000), AfterValidator(_storable)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json)]
Count = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_COUNT, le=MAX_COUNT)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PrivacyIn(_In):
    """Local DP per round: a cohort's policy, a round's requirement, or what a report declares. The
    combination is checked as :class:`arte.privacy.PrivacyPolicy` checks it (errors name the field)."""

    mechanism: Literal[MECHANISMS] = "none"  # type: ignore[valid-type]  # arte.privacy.MECHANISMS
    epsilon: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] | None = Field(
        default=None, validate_default=True, description="Privacy loss per round; unset for 'none'."
    )
    delta: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | None = Field(
        default=None, validate_default=True, description="> 0 for 'gaussian'; 0 or unset otherwise."
    )

    @field_validator("epsilon")
    @classmethod
    def _epsilon(cls, v: float | None, info: ValidationInfo) -> float | None:
        mechanism = info.data.get("mechanism")
        if mechanism == "none" and v is not None:
            raise ValueError("must be unset when mechanism is 'none' (no noise, no guarantee)")
        if mechanism not in (None, "none") and v is None:
            raise ValueError(f"is required for mechanism {mechanism!r}")
        return v

    @field_validator("delta")
    @classmethod
    def _delta(cls, v: float | None, info: ValidationInfo) -> float | None:
        mechanism = info.data.get("mechanism")
        if mechanism == "gaussian" and not v:
            raise ValueError("must be > 0 for the gaussian mechanism (e.g. 1e-6)")
        if mechanism not in (None, "gaussian") and v:
            raise ValueError(f"must be 0 or unset for {mechanism} (a pure epsilon-DP mechanism)")
        return v


class EnrollIn(_In):
    token: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    device_name: Name
    profile_id: Name
    hardware: JsonObject = Field(default_factory=dict)
    agent_version: ShortText = ""


class DraftScoreIn(_In):
    draft_id: Name
    n_items: Count
    n_correct: Count


class ReportIn(_In):
    idempotency_key: Name
    scores: Annotated[list[DraftScoreIn], Field(min_length=1, max_length=10_000)]
    mode: Literal[MODES]  # type: ignore[valid-type]
    privacy: PrivacyIn = Field(default_factory=PrivacyIn)
    agent_version: ShortText = ""


class AccuracyIn(_In):
    zero_shot: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    three_shot: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    n_items: Annotated[int, Field(ge=0, le=1_000_000_000)]


class MetricsIn(_In):
    idempotency_key: Name
    dataset_id: Id
    adapter_version: ShortText
    before: AccuracyIn
    after: AccuracyIn
    kept: bool
    train_seconds: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] = 0.0
    agent_version: ShortText = ""


# --- admin resources -------------------------------------------------------------------------------


class SeedExample(_In):
    """A public example of the task (what the teacher imitates); never a device's private data."""

    input: Annotated[str, StringConstraints(min_length=1, max_length=20_000), AfterValidator(_storable)]
    target: Annotated[list[Text], Field(max_length=100)] | Text | None = None
    choices: Annotated[list[Text], Field(max_length=100)] | None = None
    answer: Text | None = None

    @model_validator(mode="after")
    def _has_answer(self) -> "SeedExample":
        if self.choices is not None:
            if self.answer is None or self.answer not in self.choices:
                raise ValueError("a multiple-choice seed needs an answer that is one of its choices")
        elif self.target is None:
            raise ValueError("a seed needs a target (exact match) or choices and an answer")
        return self


class TaskIn(_In):
    name: Name
    instruction: Text
    seeds: Annotated[list[SeedExample], Field(max_length=1000)] = Field(default_factory=list)


class TaskOut(BaseModel):
    task_id: str
    name: str
    instruction: str
    seeds: list[dict[str, Any]]
    created_at: datetime


class CohortIn(_In):
    name: Name
    task_id: Id
    student_model: Name
    profile_class: Name
    privacy: PrivacyIn = Field(default_factory=PrivacyIn)
    min_devices: Annotated[int, Field(ge=1, le=1_000_000)] = 3


class CohortOut(BaseModel):
    cohort_id: str
    name: str
    task_id: str
    student_model: str
    profile_class: str
    privacy: dict[str, Any]
    min_devices: int
    adapter: str | None
    n_devices: int
    created_at: datetime
    adapter_id: str | None = Field(default=None, description="The cohort's teacher adapter (lineage: /adapters).")


class TokenIn(_In):
    cohort_id: Id
    ttl_s: Annotated[int, Field(gt=0, le=365 * 24 * 3600)] | None = None
    note: ShortText = ""


class TokenOut(BaseModel):
    token_id: str
    token: str = Field(description="The one-time enrollment token; shown only in this response.")
    cohort_id: str
    expires_at: datetime


class TokenInfo(BaseModel):
    token_id: str
    cohort_id: str
    note: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    device_id: str | None


class RoundIn(_In):
    cohort_id: Id
    drafts: Annotated[list[JsonObject], Field(min_length=1, max_length=10_000)]
    mode: Literal[MODES] = DEFAULT_MODE  # type: ignore[valid-type]
    max_new_tokens: Annotated[int, Field(ge=1, le=8192)] = 256
    min_items: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    privacy: PrivacyIn | None = Field(default=None, description="Defaults to the cohort's privacy policy.")
    closes_at: datetime | None = None


class RoundOut(BaseModel):
    round_id: str
    cohort_id: str
    state: Literal["open", "closed"]
    mode: str
    max_new_tokens: int
    min_items: int
    privacy: dict[str, Any]
    n_drafts: int
    n_reports: int
    created_at: datetime
    closes_at: datetime | None
    closed_at: datetime | None


class ReportOut(BaseModel):
    report_id: str
    round_id: str
    device_id: str
    mode: str
    privacy: dict[str, Any]
    agent_version: str
    received_at: datetime
    scores: list[dict[str, Any]]


class DatasetIn(_In):
    cohort_id: Id
    round_id: Id | None = None
    content: Annotated[str, StringConstraints(min_length=1), AfterValidator(_storable)] = Field(
        description="JSONL, one training example per line."
    )
    teacher: Name
    adapter: ShortText | None = None
    counts: dict[Name, Annotated[int, Field(ge=0, le=1_000_000_000)]] = Field(default_factory=dict)


class MetricsOut(BaseModel):
    metrics_id: str
    device_id: str
    dataset_id: str
    adapter_version: str
    before: dict[str, Any]
    after: dict[str, Any]
    kept: bool
    train_seconds: float
    agent_version: str
    received_at: datetime


class JobIn(_In):
    kind: JobKind
    cohort_id: Id
    round_id: Id | None = None
    params: JsonObject = Field(default_factory=dict)
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None


class JobOut(BaseModel):
    job_id: str
    kind: str
    cohort_id: str | None
    round_id: str | None
    params: dict[str, Any]
    state: JobState
    attempts: int
    max_attempts: int
    worker_id: str | None
    progress: float | None
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    not_before: datetime | None = Field(default=None, description="A retry waits until then (backoff).")
    campaign_id: str | None = Field(default=None, description="The campaign that queued the job.")


class JobLogOut(BaseModel):
    attempt: int
    at: datetime
    level: str
    message: str


class DraftEstimateOut(BaseModel):
    """One draft's pooled estimate (see :mod:`server.aggregation`); the fields after ``score`` are
    None in aggregates stored before local DP estimates existed."""

    n_devices: int
    n_items: float
    n_correct: float = Field(
        description="Sum of the devices' unbiased count estimates (noised: may be "
        "fractional, negative or exceed n_items)."
    )
    score: float | None = Field(description="The pooled accuracy clipped to [0, 1]; what pairs use.")
    accuracy: float | None = Field(default=None, description="Pooled unbiased accuracy, unclipped.")
    variance: float | None = Field(default=None, description="Variance of accuracy (noise + items).")
    noise_variance: float | None = Field(default=None, description="The part of variance due to DP noise.")
    ci_low: float | None = Field(default=None, description="95% interval of accuracy (normal).")
    ci_high: float | None = None
    eligible: bool | None = Field(default=None, description="Scored by at least k distinct devices.")


class AggregateOut(BaseModel):
    cohort_id: str
    round_id: str
    n_devices: int
    min_devices: int
    meets_k: bool = Field(description="At least k devices reported (kept for older readers).")
    may_align: bool = Field(
        description="arte.privacy.cohort_threshold: at least k devices reported and at least one draft "
        "was scored by k of them; only eligible drafts enter preference pairs."
    )
    reason: str = ""
    drafts: dict[str, DraftEstimateOut]
    excluded: dict[str, str] | None = Field(
        default=None,
        description="Devices whose stored report could not be read (device id -> why); None when not "
        "recorded (stored aggregates).",
    )
    computed_at: datetime
    job_id: str | None = None


class DeviceOut(BaseModel):
    device_id: str
    device_name: str
    cohort_id: str
    profile_id: str
    hardware: dict[str, Any]
    agent_version: str
    enrolled_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None
