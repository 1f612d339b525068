"""Wire messages between the device agent and the fleet server (HTTP/JSON under ``/api/v1``).

Plain dataclasses, shared by ``edge_agent`` (client) and ``server`` (which adds pydantic models only for
validation and OpenAPI). Conversion is in one place: :func:`to_wire` / :func:`from_wire`, a symmetric
pair. Devices pull; the server never dials a device.

Endpoints (``D`` = device key, ``A`` = admin key, both as ``Authorization: Bearer <key>``)::

    POST /api/v1/enroll                          -  EnrollRequest -> EnrollResponse (one-time token)
    GET  /api/v1/devices/me                      D  DeviceInfo
    GET  /api/v1/rounds/current                  D  RoundInfo (404 when the cohort has no open round)
    GET  /api/v1/rounds/{round_id}/drafts        D  RoundDrafts (only rounds of the device's cohort)
    POST /api/v1/rounds/{round_id}/reports       D  Report -> ReportReceipt (idempotent per device+round)
    GET  /api/v1/datasets/latest                 D  DatasetManifest (404 when none)
    GET  /api/v1/datasets/{dataset_id}/content   D  the JSONL bytes; honours ``Range: bytes=a-b``
    POST /api/v1/metrics                         D  Metrics -> MetricsReceipt (idempotent by key)
    ...  /api/v1/tasks, cohorts, tokens, rounds, jobs, aggregates   A  (admin resources; see server)

Errors, every status >= 400: ``{"error": {"type": str, "message": str, "detail": {...}}}`` where
``detail.field`` names the offending field when there is one.

Privacy: a :class:`Report` carries, per draft, only ``n_items`` and ``n_correct`` (a float when local
differential privacy noised it), never text, per-item results or item ids.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "API_PREFIX", "PROTOCOL_VERSION", "EnrollRequest", "EnrollResponse", "DeviceInfo", "RoundInfo",
    "RoundDrafts", "DraftScoreMsg", "PrivacyInfo", "Report", "ReportReceipt", "DatasetManifest",
    "Accuracy", "Metrics", "MetricsReceipt", "ErrorBody", "WireError", "to_wire", "from_wire",
]

API_PREFIX = "/api/v1"
PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class EnrollRequest:
    token: str
    device_name: str
    profile_id: str
    hardware: dict[str, Any] = field(default_factory=dict)   # cpu model, cores, RAM, accelerator: no user data
    agent_version: str = ""


@dataclass(frozen=True)
class EnrollResponse:
    device_id: str
    device_key: str          # shown once; the server keeps only a hash
    cohort_id: str
    server_time: str


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    device_name: str
    cohort_id: str
    profile_id: str
    enrolled_at: str
    last_seen_at: str | None = None


@dataclass(frozen=True)
class PrivacyInfo:
    """Local differential privacy applied to a report (or required by a round): the mechanism name
    (``none``, ``randomized_response``, ``laplace``, ``gaussian``) and its parameters per round."""

    mechanism: str = "none"
    epsilon: float | None = None
    delta: float | None = None


@dataclass(frozen=True)
class RoundInfo:
    round_id: str
    cohort_id: str
    task_name: str
    n_drafts: int
    mode: str                          # scoring mode devices must use: one of arte.scoring.MODES
    max_new_tokens: int
    min_items: int                     # a device scoring fewer items should not report
    privacy: PrivacyInfo
    created_at: str
    closes_at: str | None = None


@dataclass(frozen=True)
class RoundDrafts:
    round_id: str
    drafts: list[dict[str, Any]]       # arte.drafts.Draft.to_dict(): teacher text, public to the cohort


@dataclass(frozen=True)
class DraftScoreMsg:
    draft_id: str
    n_items: float                     # float: noised counts under local DP
    n_correct: float


@dataclass(frozen=True)
class Report:
    idempotency_key: str               # the device makes it once per (round) and re-sends it on retry
    scores: list[DraftScoreMsg]
    mode: str
    privacy: PrivacyInfo = field(default_factory=PrivacyInfo)
    agent_version: str = ""


@dataclass(frozen=True)
class ReportReceipt:
    report_id: str
    round_id: str
    device_id: str
    n_scores: int
    received_at: str
    duplicate: bool                    # True when this re-send matched a stored report


@dataclass(frozen=True)
class DatasetManifest:
    dataset_id: str
    cohort_id: str
    round_id: str | None
    sha256: str
    size: int
    n_examples: int
    created_at: str
    teacher: str
    adapter: str | None
    signature: str | None = None       # optional signature of the sha256 (see server docs)
    counts: dict[str, int] = field(default_factory=dict)   # filter counts per reason


@dataclass(frozen=True)
class Accuracy:
    zero_shot: float
    three_shot: float
    n_items: int


@dataclass(frozen=True)
class Metrics:
    idempotency_key: str
    dataset_id: str
    adapter_version: str
    before: Accuracy
    after: Accuracy
    kept: bool
    train_seconds: float = 0.0
    agent_version: str = ""


@dataclass(frozen=True)
class MetricsReceipt:
    metrics_id: str
    device_id: str
    received_at: str
    duplicate: bool


@dataclass(frozen=True)
class ErrorBody:
    type: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


class WireError(ValueError):
    """A message does not have the expected shape; ``field`` is the dotted path of the problem."""

    def __init__(self, field_path: str, problem: str) -> None:
        self.field = field_path
        super().__init__(f"{field_path}: {problem}")


T = TypeVar("T")


def to_wire(obj: Any) -> Any:
    """A message (or list/dict of them) as JSON-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj


def from_wire(cls: type[T], data: Any, path: str = "") -> T:
    """Build message ``cls`` from JSON data, checking types; raises :class:`WireError` naming the field."""
    return _convert(cls, data, path or cls.__name__)


def _convert(tp: Any, data: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise WireError(path, f"expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        names = {f.name for f in dataclasses.fields(tp)}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise WireError(f"{path}.{f.name}", "missing")
        unknown = set(data) - names
        if unknown:
            raise WireError(f"{path}.{sorted(unknown)[0]}", "unknown field")
        return tp(**kwargs)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], data, path)
    if origin is list:
        if not isinstance(data, list):
            raise WireError(path, f"expected a list, got {type(data).__name__}")
        (item,) = typing.get_args(tp)
        return [_convert(item, x, f"{path}[{i}]") for i, x in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise WireError(path, f"expected an object, got {type(data).__name__}")
        return dict(data)
    if tp is Any:
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise WireError(path, f"expected a number, got {type(data).__name__}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise WireError(path, f"expected an integer, got {type(data).__name__}")
        return data
    if tp in (str, bool):
        if not isinstance(data, tp):
            raise WireError(path, f"expected a {tp.__name__}, got {type(data).__name__}")
        return data
    raise TypeError(f"unsupported wire type {tp!r} at {path}")  # pragma: no cover - a bug in this module
