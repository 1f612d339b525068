"""Server side: unbiased per-draft estimates from noised reports, pooled over devices, and k-thresholds.

Contract: ``estimate_report(scores, privacy)`` inverts a report's noise — it recomputes the report's
calibration from public values (mechanism, ε, δ and the number of scores) — and returns, per draft, an
unbiased estimate of the true count of correct items with the variance the noise adds
(``debias_report``: the same as two arrays).
``pool_estimates`` combines devices into one accuracy per draft with a variance and a confidence
interval; ``cohort_threshold`` says whether a cohort's reports may drive alignment at all.

Estimators (c the true count, n items, D drafts in the report, c̃ what was reported):

* randomized response, flip probability p: E[c̃] = p·n + (1 − 2p)·c, so ĉ = (c̃ − p·n)/(1 − 2p) is
  unbiased and Var ĉ = n·p(1 − p)/(1 − 2p)² (the flips are independent and each reported bit has
  variance p(1 − p) whatever the true bit). Estimates may fall outside [0, n]: clipping would bias them.
* Laplace (scale b) and Gaussian (σ): c̃ = c + noise, noise mean 0, so ĉ = c̃; Var = 2b² or σ².
* none: ĉ = c̃, Var 0.

Pooling. Device i's accuracy estimate â_i = ĉ_i/n_i has noise variance v_i/n_i² and item-sampling
variance a(1 − a)/n_i. Devices are weighted by w_i = 1/(1/(4n_i) + v_i/n_i²) — inverse variance with
the Bernoulli variance at its maximum 1/4 — so the weights depend only on public values (n_i and the
mechanism), never on the reported counts, and the pooled Σ w_i â_i / Σ w_i is exactly unbiased for the
same weighted mean of the devices' true accuracies. Without noise w_i ∝ n_i (the micro-average); under
heavy noise w_i ∝ n_i² (devices with more items drown their noise better). ``noise_variance`` is exact
given the devices' data; ``variance`` adds the item-sampling part with the pooled accuracy plugged in,
treating items as independent draws shared by the cohort (it ignores differences between devices). The
noise of different drafts is independent, so variances of differences between drafts add.

Threshold: a cohort's reports may drive alignment only when at least k distinct devices reported, and
only drafts that k distinct devices scored may be used, so no pair reflects fewer than k devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np

from arte.errors import ConfigError, ReportContentError
from arte.privacy.mechanisms import Calibration, calibrate
from arte.wire import DraftScoreMsg, PrivacyInfo

__all__ = ["DraftEstimate", "PooledDraft", "CohortDecision", "ScoreCounts", "debias_counts", "debias_report",
           "estimate_report", "pool_accuracy", "pool_estimates", "cohort_threshold"]


@dataclass(frozen=True)
class DraftEstimate:
    """One device's unbiased estimate of a draft's correct count and the noise variance of it."""

    draft_id: str
    n_items: float
    correct: float
    variance: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n_items


@dataclass(frozen=True)
class PooledDraft:
    """A draft's accuracy over the devices that scored it, with a normal-approximation interval."""

    draft_id: str
    n_devices: int
    n_items: float
    accuracy: float
    variance: float
    noise_variance: float
    ci_low: float
    ci_high: float


def debias_counts(noisy: np.ndarray, n_items: np.ndarray | float,
                  calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise unbiased count estimates and their noise variances (see the module docstring)."""
    c = np.asarray(noisy, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_items, dtype=np.float64), c.shape)
    var = np.broadcast_to(np.asarray(calibration.count_variance(n), dtype=np.float64), c.shape)
    if calibration.mechanism == "randomized_response":
        p = calibration.flip_prob
        return (c - p * n) / (1.0 - 2.0 * p), var / (1.0 - 2.0 * p) ** 2
    return c, np.array(var)


def estimate_report(scores: Sequence[DraftScoreMsg], privacy: PrivacyInfo) -> list[DraftEstimate]:
    """Unbiased per-draft estimates of one device's report. Values a mechanism cannot produce (e.g. a
    randomized-response count that is not an integer in [0, n]) raise :class:`ReportContentError`."""
    est, var = debias_report(scores, privacy)
    return [DraftEstimate(s.draft_id, s.n_items, float(e), float(v)) for s, e, v in zip(scores, est, var)]


class ScoreCounts(Protocol):
    """What :func:`debias_report` reads of a draft's score: a :class:`~arte.wire.DraftScoreMsg`, or a
    validated mirror of one (the server's request model)."""

    @property
    def draft_id(self) -> str: ...

    @property
    def n_items(self) -> float: ...

    @property
    def n_correct(self) -> float: ...


def debias_report(scores: Sequence[ScoreCounts], privacy: PrivacyInfo) -> tuple[np.ndarray, np.ndarray]:
    """:func:`estimate_report` as two arrays in the order of ``scores``: the unbiased counts and their
    noise variances (for a caller that only checks them, without one object per draft)."""
    if not scores:
        raise ReportContentError("scores", "empty report")
    try:
        cal = calibrate(privacy.mechanism, privacy.epsilon, privacy.delta or 0.0, len(scores))
    except ConfigError as e:
        raise ReportContentError(f"privacy.{e.field}", e.problem) from None
    exact = privacy.mechanism in ("none", "randomized_response")
    for i, s in enumerate(scores):
        if not (math.isfinite(s.n_items) and s.n_items >= 1 and float(s.n_items).is_integer()):
            raise ReportContentError(f"scores[{i}].n_items", f"expected a whole number >= 1, got {s.n_items}")
        if not math.isfinite(s.n_correct):
            raise ReportContentError(f"scores[{i}].n_correct", f"expected a finite number, got {s.n_correct}")
        if exact and not (float(s.n_correct).is_integer() and 0 <= s.n_correct <= s.n_items):
            raise ReportContentError(f"scores[{i}].n_correct", f"{privacy.mechanism} reports a whole count "
                                                               f"in [0, {s.n_items:g}], got {s.n_correct}")
    return debias_counts(np.array([s.n_correct for s in scores]), np.array([s.n_items for s in scores]), cal)


def pool_accuracy(correct: np.ndarray, n_items: np.ndarray,
                  noise_var: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool devices along axis 0: arrays ``(devices, ...)`` of unbiased counts, item counts and noise
    variances; returns (accuracy, variance, noise_variance) of shape ``(...)``. Weights as in the module
    docstring."""
    c = np.asarray(correct, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_items, dtype=np.float64), c.shape)
    v = np.broadcast_to(np.asarray(noise_var, dtype=np.float64), c.shape)
    w = 1.0 / (0.25 / n + v / n ** 2)
    wsum = w.sum(axis=0)
    acc = (w * c / n).sum(axis=0) / wsum
    noise = (w ** 2 * v / n ** 2).sum(axis=0) / wsum ** 2
    a = np.clip(acc, 0.0, 1.0)
    sampling = (w ** 2 / n).sum(axis=0) * a * (1.0 - a) / wsum ** 2
    return acc, noise + sampling, noise


def pool_estimates(reports: Iterable[Sequence[DraftEstimate]], z: float = 1.96) -> dict[str, PooledDraft]:
    """Pool the estimates of many devices (one sequence per device) into one per draft id."""
    by_draft: dict[str, list[DraftEstimate]] = {}
    for report in reports:
        for e in report:
            by_draft.setdefault(e.draft_id, []).append(e)
    out: dict[str, PooledDraft] = {}
    for draft_id, ests in by_draft.items():
        acc, var, noise = pool_accuracy(np.array([e.correct for e in ests]),
                                        np.array([e.n_items for e in ests]),
                                        np.array([e.variance for e in ests]))
        half = z * math.sqrt(float(var))
        out[draft_id] = PooledDraft(draft_id, len(ests), float(sum(e.n_items for e in ests)), float(acc),
                                    float(var), float(noise), float(acc) - half, float(acc) + half)
    return out


@dataclass(frozen=True)
class CohortDecision:
    """Whether a cohort's reports may drive alignment, and which drafts enough devices scored."""

    allowed: bool
    n_devices: int
    min_devices: int
    drafts: frozenset[str]
    reason: str


def cohort_threshold(reported: Mapping[str, Iterable[str]], min_devices: int) -> CohortDecision:
    """``reported`` maps each device id to the draft ids it reported. Allowed when at least
    ``min_devices`` distinct devices reported and at least one draft was scored by that many."""
    if isinstance(min_devices, bool) or not isinstance(min_devices, int) or min_devices < 1:
        raise ConfigError("min_devices", f"must be an integer >= 1, got {min_devices!r}")
    per_draft: dict[str, set[str]] = {}
    devices = set()
    for device_id, draft_ids in reported.items():
        ids = set(draft_ids)
        if ids:
            devices.add(device_id)
        for d in ids:
            per_draft.setdefault(d, set()).add(device_id)
    drafts = frozenset(d for d, devs in per_draft.items() if len(devs) >= min_devices)
    if len(devices) < min_devices:
        return CohortDecision(False, len(devices), min_devices, frozenset(),
                              f"{len(devices)} device(s) reported; at least {min_devices} are needed")
    if not drafts:
        return CohortDecision(False, len(devices), min_devices, drafts,
                              f"no draft was scored by {min_devices} distinct devices")
    return CohortDecision(True, len(devices), min_devices, drafts,
                          f"{len(devices)} devices reported; {len(drafts)} of {len(per_draft)} drafts were "
                          f"scored by at least {min_devices}")
