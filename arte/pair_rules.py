"""When one draft's score beats another's beyond noise: the rule a preference pair must pass.

Contract: a draft's score is a :class:`ScoreEstimate` (its accuracy on ``n_items`` items, the variance of
that accuracy, the *unit* it was scored on, and optionally its per-item outcomes). :func:`separation`
compares two estimates at a two-sided ``confidence`` level and says whether the first beats the second,
and by which rule. Pure: numbers in, numbers out.

Rules (``z`` the normal quantile of the level, e.g. 1.645 at 0.9):

* ``intervals`` — chosen's lower bound above rejected's upper bound: ``s_a − z·sd_a > s_b + z·sd_b``.
  ``sd`` comes from the estimate's variance: the binomial ``s(1 − s)/n`` offline, the pooled variance the
  server computes (item sampling plus local-DP noise) in the fleet. It is floored at the Agresti–Caffo
  binomial variance ``p̃(1 − p̃)/(n + 2)``, ``p̃ = (s·n + 1)/(n + 2)``, so a draft that got every item (or
  none) of a few right still has a width. Valid whatever the correlation of the two drafts' outcomes:
  the standard deviation of a difference never exceeds ``sd_a + sd_b``. It is therefore conservative for
  drafts scored on the same items (it ignores their pairing); for drafts scored on different items it is
  the only rule available.
* ``paired`` — for two drafts scored on the same items with known per-item outcomes (the offline
  pipeline): the lower bound of the difference's interval above 0, from the discordant items only
  (``n10`` items the first got right and the second wrong, ``n01`` the reverse). Agresti–Min's adjusted
  Wald interval for paired proportions: ``p̃10 = (n10 + ½)/(n + 2)``, ``p̃01 = (n01 + ½)/(n + 2)``,
  ``d̃ = p̃10 − p̃01``, ``Var = (p̃10 + p̃01 − d̃²)/(n + 2)``. Items both drafts get right (or wrong) carry
  no preference and add no noise, which is why it is sharper than ``intervals`` for the rationales of one
  question: the same student answers the same items after either rationale, so most outcomes agree. It
  needs per-item outcomes; reports from devices carry counts only, so the fleet uses ``intervals``.

The level is per comparison: selecting the best and the worst of ``m`` rationales makes a pair between
equally good rationales more likely than ``1 − confidence`` when ``m > 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

from arte.errors import ConfigError

__all__ = ["COMPARISONS", "ScoreEstimate", "binomial_estimate", "z_value", "interval", "separation"]

COMPARISONS = ("paired", "intervals")
TIE_TOLERANCE = 1e-12   # scores closer than this are equal (float rounding of equal counts)


@dataclass(frozen=True)
class ScoreEstimate:
    """A draft's accuracy ``score`` in [0, 1] on ``n_items`` items and the ``variance`` of that score.

    ``unit`` names what the draft was scored on: drafts with the same unit were scored on the same items
    (one device's round, or one offline validation split; in the fleet, the set of devices that scored
    it). ``outcomes``, when known, are the per-item results (1 correct, 0 wrong) in the unit's item order.
    """

    n_items: float
    score: float
    variance: float
    unit: str = ""
    outcomes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("n_items", "score", "variance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(name, f"must be a finite number, got {v!r}")
        if self.n_items <= 0 or not 0.0 <= self.score <= 1.0 or self.variance < 0:
            raise ConfigError("score", f"needs n_items > 0, score in [0, 1] and variance >= 0, got "
                                       f"{self.n_items}, {self.score}, {self.variance}")
        if self.outcomes is not None and len(self.outcomes) != self.n_items:
            raise ConfigError("outcomes", f"{len(self.outcomes)} outcomes for {self.n_items} items")

    @property
    def sd(self) -> float:
        """The standard deviation the rules use: the variance, floored at the Agresti–Caffo binomial one."""
        n = self.n_items
        p = (self.score * n + 1.0) / (n + 2.0)
        return math.sqrt(max(self.variance, p * (1.0 - p) / (n + 2.0)))


def binomial_estimate(n_items: float, n_correct: float, *, unit: str = "",
                      outcomes: Sequence[int] | None = None) -> ScoreEstimate:
    """The estimate of plain counts: ``score = clip(n_correct / n_items, 0, 1)``, binomial variance."""
    s = min(1.0, max(0.0, n_correct / n_items))
    return ScoreEstimate(float(n_items), s, s * (1.0 - s) / n_items, unit,
                         None if outcomes is None else tuple(int(o) for o in outcomes))


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (0 at level 0: point estimates)."""
    return NormalDist().inv_cdf((1.0 + confidence) / 2.0) if confidence > 0 else 0.0


def interval(e: ScoreEstimate, z: float) -> tuple[float, float]:
    """``score ± z·sd`` (see :attr:`ScoreEstimate.sd`)."""
    return e.score - z * e.sd, e.score + z * e.sd


def _paired_lower(a: Sequence[int], b: Sequence[int], z: float) -> float:
    n = len(a)
    n10 = sum(1 for x, y in zip(a, b) if x and not y)
    n01 = sum(1 for x, y in zip(a, b) if y and not x)
    p10, p01 = (n10 + 0.5) / (n + 2.0), (n01 + 0.5) / (n + 2.0)
    d = p10 - p01
    return d - z * math.sqrt(max(0.0, p10 + p01 - d * d) / (n + 2.0))


def separation(a: ScoreEstimate, b: ScoreEstimate, z: float, comparison: str = "paired") -> tuple[bool, str]:
    """Whether ``a`` beats ``b`` beyond noise at quantile ``z``, and the rule used (``paired`` when asked for
    and both carry outcomes on the same unit, else ``intervals``)."""
    if comparison not in COMPARISONS:
        raise ConfigError("comparison", f"must be one of {', '.join(COMPARISONS)}, got {comparison!r}")
    if (comparison == "paired" and a.outcomes is not None and b.outcomes is not None and a.unit == b.unit
            and len(a.outcomes) == len(b.outcomes)):
        return _paired_lower(a.outcomes, b.outcomes, z) > 0.0, "paired"
    return interval(a, z)[0] > interval(b, z)[1], "intervals"
