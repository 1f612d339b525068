"""Aggregation of device reports into per-draft cohort estimates: the one place that does it.

Contract: :func:`aggregate` takes the stored rows of one round (one report per device; every row carries
its report's declared ``privacy``) and the cohort's k, and returns per draft an unbiased accuracy
estimate with its variance and 95% interval, and for the cohort whether its scores may drive alignment.

Reading. Each device's report is read with :func:`arte.privacy.estimate_report`: the noise law is
recomputed from public values only (the declared mechanism, ε, δ and the number of scores in the
report), randomized response is inverted, zero-mean additive noise (Laplace, Gaussian) is kept as is,
and each count gets the exact variance its noise adds. Devices are pooled with
:func:`arte.privacy.pool_estimates`, whose weights depend only on public values (each device's item
count and noise law), so the pooled accuracy stays unbiased. Without noise the weights are proportional
to the items, so ``score`` is ``sum(n_correct) / sum(n_items)`` exactly as before local DP was wired in.

Per draft (:meth:`DraftAggregate.to_dict`): ``n_devices``, ``n_items`` (total items), ``n_correct`` (the
sum of the devices' unbiased count estimates; may be fractional, negative or exceed ``n_items`` under
noise), ``score`` (the pooled accuracy clipped to [0, 1], the value pairs are built from; None when no
finite estimate exists), ``accuracy`` (unclipped, unbiased), ``variance`` (noise + item sampling),
``noise_variance``, ``ci_low``/``ci_high`` (normal 95% interval) and ``eligible`` (scored by at least k
distinct devices).

Threshold: :func:`arte.privacy.cohort_threshold` decides ``may_align`` (at least k distinct devices
reported and at least one draft was scored by k of them); only eligible drafts may enter preference
pairs (:meth:`CohortAggregate.alignment_scores`). They reach :func:`arte.pairs.select_pairs` as
:class:`arte.pair_rules.ScoreEstimate` (:meth:`CohortAggregate.alignment_estimates`): the pooled score
and its pooled ``variance`` (item sampling plus local-DP noise), so a pair needs a margin beyond that
noise; the estimate's ``unit`` is the set of devices that scored the draft (each device scores all its
drafts of a round on the same items), so rationales of a question are compared only when the same
devices scored them. ``meets_k`` (k devices reported at all) is kept for
older readers. A device whose stored rows its declared mechanism cannot have produced (possible only for
rows stored before the server checked reports on arrival) is left out and listed in ``excluded``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from arte import wire
from arte.errors import ReportContentError
from arte.pair_rules import ScoreEstimate
from arte.privacy import cohort_threshold, estimate_report, pool_estimates

__all__ = ["ScoreRow", "DraftAggregate", "CohortAggregate", "aggregate", "stored_decision"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRow:
    """One device's counts for one draft, as stored, with its report's declared privacy."""

    device_id: str
    draft_id: str
    n_items: float
    n_correct: float
    privacy: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DraftAggregate:
    draft_id: str
    n_devices: int
    n_items: float  # total items scored
    n_correct: float  # sum of the devices' unbiased count estimates
    score: float | None  # clip(accuracy, 0, 1); None without a finite estimate
    accuracy: float | None = None  # pooled unbiased accuracy (unclipped)
    variance: float | None = None  # noise + item-sampling variance of ``accuracy``
    noise_variance: float | None = None
    ci_low: float | None = None  # 95% normal interval of ``accuracy``
    ci_high: float | None = None
    eligible: bool = False  # scored by at least k distinct devices
    devices: tuple[str, ...] = ()  # the devices whose reports it was pooled from (not stored)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_devices": self.n_devices,
            "n_items": self.n_items,
            "n_correct": self.n_correct,
            "score": self.score,
            "accuracy": self.accuracy,
            "variance": self.variance,
            "noise_variance": self.noise_variance,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "eligible": self.eligible,
        }


@dataclass(frozen=True)
class CohortAggregate:
    n_devices: int  # distinct devices whose report was read
    min_devices: int
    drafts: dict[str, DraftAggregate]  # in first-seen order
    may_align: bool = False
    reason: str = ""
    excluded: dict[str, str] = field(default_factory=dict)  # device id -> why its report was left out

    @property
    def meets_k(self) -> bool:
        return self.n_devices >= self.min_devices

    def scores(self) -> dict[str, float | None]:
        """draft id -> score, every draft (the per-device and display view)."""
        return {d: a.score for d, a in self.drafts.items()}

    def alignment_scores(self) -> dict[str, float]:
        """draft id -> score of the drafts that may enter preference pairs: none unless ``may_align``,
        then only drafts scored by at least k distinct devices, with a finite score."""
        if not self.may_align:
            return {}
        return {d: a.score for d, a in self.drafts.items() if a.eligible and a.score is not None}

    def alignment_estimates(self) -> dict[str, ScoreEstimate]:
        """The same drafts as :class:`~arte.pair_rules.ScoreEstimate` for :func:`arte.pairs.select_pairs`:
        the pooled score, its pooled variance (noise included) and, as the unit, the devices that scored it.
        Drafts without a finite variance are left out."""
        out = {}
        for d, s in self.alignment_scores().items():
            a = self.drafts[d]
            if a.variance is not None and a.n_items > 0:
                out[d] = ScoreEstimate(a.n_items, s, a.variance, unit=",".join(sorted(a.devices)))
        return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _read_device(rows: list[ScoreRow]) -> list[Any]:
    """One device's report as :class:`arte.privacy.DraftEstimate` (raises ReportContentError)."""
    privacy = rows[0].privacy
    if any(r.privacy != privacy for r in rows):
        raise ReportContentError("privacy", "rows of one report declare different privacy")
    scores = [wire.DraftScoreMsg(r.draft_id, float(r.n_items), float(r.n_correct)) for r in rows]
    p = wire.PrivacyInfo(privacy.get("mechanism", "none"), privacy.get("epsilon"), privacy.get("delta"))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return estimate_report(scores, p)


def aggregate(rows: Iterable[ScoreRow], min_devices: int) -> CohortAggregate:
    """Per-draft pooled estimates of one round; ``min_devices`` is the cohort's k."""
    if min_devices < 1:
        raise ValueError(f"min_devices: must be >= 1, got {min_devices}")
    by_device: dict[str, list[ScoreRow]] = {}
    order: dict[str, None] = {}
    for r in rows:
        by_device.setdefault(r.device_id, []).append(r)
        order.setdefault(r.draft_id, None)
    estimates: dict[str, list[Any]] = {}
    excluded: dict[str, str] = {}
    for device_id, device_rows in by_device.items():
        try:
            estimates[device_id] = _read_device(device_rows)
        except ReportContentError as e:
            excluded[device_id] = f"{e.field}: {e.problem}"
            log.warning("report of device %s left out of the aggregate: %s", device_id, excluded[device_id])
    pooled = pool_estimates(estimates.values())
    decision = cohort_threshold({d: [e.draft_id for e in ests] for d, ests in estimates.items()}, min_devices)
    correct: dict[str, float] = {}
    devices: dict[str, list[str]] = {}
    for device_id, ests in estimates.items():
        for e in ests:
            correct[e.draft_id] = correct.get(e.draft_id, 0.0) + e.correct
            devices.setdefault(e.draft_id, []).append(device_id)
    drafts: dict[str, DraftAggregate] = {}
    for draft_id in order:
        p = pooled.get(draft_id)
        if p is None:
            continue
        acc = _finite(p.accuracy)
        drafts[draft_id] = DraftAggregate(
            draft_id,
            n_devices=p.n_devices,
            n_items=p.n_items,
            n_correct=_finite(correct[draft_id]) or 0.0,
            score=None if acc is None else min(1.0, max(0.0, acc)),
            accuracy=acc,
            variance=_finite(p.variance),
            noise_variance=_finite(p.noise_variance),
            ci_low=_finite(p.ci_low),
            ci_high=_finite(p.ci_high),
            eligible=draft_id in decision.drafts,
            devices=tuple(devices[draft_id]),
        )
    return CohortAggregate(
        n_devices=len(estimates),
        min_devices=min_devices,
        drafts=drafts,
        may_align=decision.allowed,
        reason=decision.reason,
        excluded=excluded,
    )


def stored_decision(
    n_devices: int, min_devices: int, drafts: Mapping[str, Mapping[str, Any]]
) -> tuple[bool, str, set[str]]:
    """``may_align``, the reason and the eligible drafts of a stored aggregate, from its stored counts
    (the same rule as :func:`arte.privacy.cohort_threshold`: the per-draft ``n_devices`` are distinct
    devices). Aggregates stored before ``eligible`` existed are read the same way."""
    eligible = {d: a for d, a in drafts.items() if int(a.get("n_devices", 0)) >= min_devices}
    if n_devices < min_devices:
        return False, f"{n_devices} device(s) reported; at least {min_devices} are needed", set()
    if not eligible:
        return False, f"no draft was scored by {min_devices} distinct devices", set()
    return (
        True,
        f"{n_devices} devices reported; {len(eligible)} of {len(drafts)} drafts were scored by at least "
        f"{min_devices}",
        set(eligible),
    )
