"""Aggregation of device reports into per-draft scores for a cohort: the one place that does it.

Contract: :func:`aggregate` takes the per-device, per-draft counts of one round (floats: under local
differential privacy a device sends noised counts, which may be fractional, negative or exceed the item
count) and returns, per draft, the items-weighted accuracy ``sum(n_correct) / sum(n_items)`` over every
device that scored it, with the number of devices. A cohort's scores may drive alignment only when at
least ``min_devices`` (k) distinct devices reported (``meets_k``).

Extension point for privacy: ``_estimate`` turns the summed observed counts of a draft into estimates
of the true sums. Today it is the identity (correct for un-noised counts and for zero-mean additive
noise such as Laplace/Gaussian, whose sums are already unbiased). An unbiased estimator for, e.g.,
randomized response replaces it, using the report's ``privacy`` (the mechanism and epsilon), which every
row carries for that reason. The score is clipped to [0, 1] only after estimation, and is None when the
estimated item count is not positive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScoreRow", "DraftAggregate", "CohortAggregate", "aggregate"]


@dataclass(frozen=True)
class ScoreRow:
    """One device's counts for one draft, as stored."""

    device_id: str
    draft_id: str
    n_items: float
    n_correct: float
    privacy: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DraftAggregate:
    draft_id: str
    n_devices: int
    n_items: float  # estimated total items scored
    n_correct: float  # estimated total correct
    score: float | None  # clip(n_correct / n_items, 0, 1); None when n_items <= 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_devices": self.n_devices,
            "n_items": self.n_items,
            "n_correct": self.n_correct,
            "score": self.score,
        }


@dataclass(frozen=True)
class CohortAggregate:
    n_devices: int  # distinct devices with at least one row
    min_devices: int
    drafts: dict[str, DraftAggregate]  # in first-seen order

    @property
    def meets_k(self) -> bool:
        return self.n_devices >= self.min_devices

    def scores(self) -> dict[str, float | None]:
        """draft id -> score, the shape pair building takes."""
        return {d: a.score for d, a in self.drafts.items()}


def _estimate(n_items: float, n_correct: float, privacy: list[dict[str, Any]]) -> tuple[float, float]:
    """Estimated true sums from observed sums (identity: see the module docstring)."""
    del privacy
    return n_items, n_correct


def aggregate(rows: Iterable[ScoreRow], min_devices: int) -> CohortAggregate:
    """Items-weighted per-draft accuracy over devices; ``min_devices`` is the cohort's k."""
    if min_devices < 1:
        raise ValueError(f"min_devices: must be >= 1, got {min_devices}")
    sums: dict[str, list[float]] = {}
    devices_per_draft: dict[str, set[str]] = {}
    privacy: dict[str, list[dict[str, Any]]] = {}
    devices: set[str] = set()
    for r in rows:
        s = sums.setdefault(r.draft_id, [0.0, 0.0])
        s[0] += r.n_items
        s[1] += r.n_correct
        devices_per_draft.setdefault(r.draft_id, set()).add(r.device_id)
        privacy.setdefault(r.draft_id, []).append(r.privacy)
        devices.add(r.device_id)
    drafts: dict[str, DraftAggregate] = {}
    for draft_id, (n_items, n_correct) in sums.items():
        est_items, est_correct = _estimate(n_items, n_correct, privacy[draft_id])
        score = None if est_items <= 0 else min(1.0, max(0.0, est_correct / est_items))
        drafts[draft_id] = DraftAggregate(
            draft_id, len(devices_per_draft[draft_id]), est_items, est_correct, score
        )
    return CohortAggregate(n_devices=len(devices), min_devices=min_devices, drafts=drafts)
