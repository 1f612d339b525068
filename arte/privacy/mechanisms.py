"""Local differential privacy mechanisms for a device's per-draft counts, and the policy that picks one.

Contract: ``calibrate(mechanism, epsilon, delta, n_drafts)`` turns a per-round privacy target into the
noise parameters (a :class:`Calibration`); ``privatize(outcomes, calibration, rng)`` turns a device's
draft × item outcome matrix (0/1) into the noisy per-draft counts it may report. Both sides of the wire
call ``calibrate`` with the same public inputs (mechanism, epsilon, delta from the report's
``PrivacyInfo``; ``n_drafts`` = the number of scores in the report), so the server knows the exact noise
law of every report without the device sending anything else. Pure numpy; the random generator is
injected, so a seed reproduces every draw.

Unit of privacy. A device's private data is its validation set ``x = (x_1 … x_n)``; its report is
``c = (c_1 … c_D)``, ``c_d = Σ_j f(draft_d, x_j)`` with ``f ∈ {0, 1}`` the student's one-shot outcome.
Neighbouring datasets differ in ONE validation item (its text, options and label replaced; ``n`` fixed,
so ``n_items`` is reported in the clear — the round should fix it). Replacing ``x_j`` changes column ``j``
of the outcome matrix: each of the D counts moves by at most 1. Hence:

* L∞ sensitivity 1 per draft, **L1 sensitivity D** (all D counts move by 1), **L2 sensitivity √D**.
* This holds for ANY drafts, even ones a curious server crafted to probe the data: ``f`` is bounded by
  its output domain {0, 1}, not by assumptions about the student.

Mechanisms (epsilon, delta are per report, i.e. per round, covering all D drafts):

* ``randomized_response`` — every outcome bit is flipped independently with probability
  ``p = 1/(1+e^{ε'})``, ``ε' = ε/D``; the device reports the count of noisy bits per draft. One item
  enters D bits (one per draft); each bit is ε'-LDP (likelihood ratio ≤ (1−p)/p = e^{ε'}), the other
  bits do not depend on the item, so by basic composition over the D drafts the report is
  D·ε' = ε-DP. Counting the bits is post-processing. Noisy count variance: ``n p (1−p)`` per draft.
* ``laplace`` — ``c_d + Lap(b)``, ``b = D/ε`` (L1 sensitivity D): ε-DP (Dwork et al., 2006). Variance
  ``2 b²`` per draft.
* ``gaussian`` — ``c_d + N(0, σ²)``, σ from the analytic Gaussian mechanism (Balle & Wang, 2018,
  Thm 8) for L2 sensitivity √D: the smallest σ with
  ``Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ) ≤ δ``; it is (ε, δ)-DP for every ε (the classic
  ``σ = Δ√(2 ln(1.25/δ))/ε`` needs ε < 1 and is larger). Variance ``σ²`` per draft.

Each calibration also states its zero-concentrated DP parameter ρ (Bun & Steinke, 2016) for the
accountant: the D coordinates of RR and Laplace are each (ε/D)-DP, hence (ε/D)²/2-zCDP, and compose to
``ρ = ε²/(2D)``; the Gaussian is ``ρ = Δ₂²/(2σ²) = D/(2σ²)``-zCDP.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from arte.errors import ConfigError

__all__ = ["MECHANISMS", "PrivacyPolicy", "Calibration", "calibrate", "privatize", "randomized_response",
           "analytic_gaussian_sigma", "gaussian_delta", "classic_gaussian_sigma"]

MECHANISMS = ("none", "randomized_response", "laplace", "gaussian")


@dataclass(frozen=True)
class PrivacyPolicy:
    """A device's local DP policy.

    Args:
        mechanism: ``none`` (exact counts), ``randomized_response``, ``laplace`` or ``gaussian``.
        epsilon: privacy loss per round (per report, all drafts together); None with ``none``.
        delta: failure probability per round; must be > 0 for ``gaussian`` and 0 otherwise.
        total_epsilon: the device's lifetime budget the accountant enforces (``inf`` = no limit).
        total_delta: the lifetime delta budget; a Gaussian policy needs it >= ``delta``.
    """

    mechanism: str = "none"
    epsilon: float | None = None
    delta: float = 0.0
    total_epsilon: float = math.inf
    total_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ConfigError("mechanism", f"must be one of {', '.join(MECHANISMS)}, got {self.mechanism!r}")
        if self.mechanism == "none":
            if self.epsilon is not None:
                raise ConfigError("epsilon", "must be unset when mechanism is 'none' (no noise, no "
                                             "guarantee)")
        elif self.epsilon is None or not (0.0 < self.epsilon < math.inf):
            raise ConfigError("epsilon", f"must be a finite number > 0 for {self.mechanism}, "
                                         f"got {self.epsilon}")
        if not 0.0 <= self.delta < 1.0:
            raise ConfigError("delta", f"must be in [0, 1), got {self.delta}")
        if self.mechanism == "gaussian" and self.delta <= 0.0:
            raise ConfigError("delta", "must be > 0 for the gaussian mechanism (e.g. 1e-6)")
        if self.mechanism != "gaussian" and self.delta != 0.0:
            raise ConfigError("delta", f"must be 0 for {self.mechanism} (a pure epsilon-DP mechanism)")
        if not self.total_epsilon > 0.0:
            raise ConfigError("total_epsilon", f"must be > 0 (inf for no limit), got {self.total_epsilon}")
        if self.epsilon is not None and self.total_epsilon < self.epsilon:
            raise ConfigError("total_epsilon", f"{self.total_epsilon} is below one round's epsilon "
                                                f"{self.epsilon}: the device could never report")
        if not 0.0 <= self.total_delta < 1.0:
            raise ConfigError("total_delta", f"must be in [0, 1), got {self.total_delta}")
        if self.total_delta < self.delta:
            raise ConfigError("total_delta", f"{self.total_delta} is below one round's delta {self.delta}")


@dataclass(frozen=True)
class Calibration:
    """Noise parameters of one report of ``n_drafts`` counts (see the module docstring).

    ``flip_prob`` is the per-bit flip probability (randomized response), ``scale`` the Laplace b or the
    Gaussian σ per count, ``rho`` the zCDP parameter of the whole report (``inf`` for ``none``).
    """

    mechanism: str
    epsilon: float
    delta: float
    n_drafts: int
    flip_prob: float = 0.0
    scale: float = 0.0
    rho: float = math.inf

    @property
    def l1_sensitivity(self) -> float:
        return float(self.n_drafts)

    @property
    def l2_sensitivity(self) -> float:
        return math.sqrt(self.n_drafts)

    def count_variance(self, n_items: float) -> float:
        """Variance of one reported count around its mean, given the number of items."""
        if self.mechanism == "randomized_response":
            return n_items * self.flip_prob * (1.0 - self.flip_prob)
        if self.mechanism == "laplace":
            return 2.0 * self.scale ** 2
        if self.mechanism == "gaussian":
            return self.scale ** 2
        return 0.0


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The exact delta of the Gaussian mechanism N(0, σ²) with L2 ``sensitivity`` at ``epsilon``
    (Balle & Wang, 2018, Theorem 8)."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    tail = _phi(-a - b)
    second = math.exp(epsilon + math.log(tail)) if tail > 0.0 else 0.0
    return max(0.0, _phi(a - b) - second)


def classic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """σ = Δ√(2 ln(1.25/δ))/ε (Dwork & Roth, 2014, Thm A.1; valid for ε < 1). For comparison only."""
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


@functools.lru_cache(maxsize=256)   # pure, and the server calls it for every report it reads
def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest σ (to 1e-12 relative) for which N(0, σ²) noise is (ε, δ)-DP at L2 ``sensitivity``.

    ``gaussian_delta`` decreases in σ, so bisection on log σ; the returned σ is on the safe side.
    """
    if not (epsilon > 0 and 0 < delta < 1 and sensitivity > 0):
        raise ConfigError("epsilon", f"need epsilon > 0, 0 < delta < 1, sensitivity > 0; got "
                                     f"{epsilon}, {delta}, {sensitivity}")
    hi = classic_gaussian_sigma(min(epsilon, 0.5), delta, sensitivity)
    while gaussian_delta(hi, epsilon, sensitivity) > delta:
        hi *= 2.0
    lo = hi / 2.0
    while gaussian_delta(lo, epsilon, sensitivity) <= delta:
        hi, lo = lo, lo / 2.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if gaussian_delta(mid, epsilon, sensitivity) <= delta:
            hi = mid
        else:
            lo = mid
        if hi / lo - 1.0 < 1e-12:
            break
    return hi


def calibrate(mechanism: str, epsilon: float | None, delta: float, n_drafts: int) -> Calibration:
    """Noise parameters that make a report of ``n_drafts`` counts (ε, δ)-DP for one item (see module)."""
    if n_drafts < 1:
        raise ConfigError("n_drafts", f"must be >= 1, got {n_drafts}")
    if mechanism == "none":
        return Calibration("none", math.inf, 0.0, n_drafts)
    policy = PrivacyPolicy(mechanism, epsilon, delta, total_delta=delta)   # validates the combination
    eps = float(policy.epsilon)  # type: ignore[arg-type]
    if mechanism == "randomized_response":
        p = 1.0 / (1.0 + math.exp(eps / n_drafts))
        return Calibration(mechanism, eps, 0.0, n_drafts, flip_prob=p, rho=eps ** 2 / (2 * n_drafts))
    if mechanism == "laplace":
        return Calibration(mechanism, eps, 0.0, n_drafts, scale=n_drafts / eps, rho=eps ** 2 / (2 * n_drafts))
    sigma = analytic_gaussian_sigma(eps, delta, math.sqrt(n_drafts))
    return Calibration(mechanism, eps, delta, n_drafts, scale=sigma, rho=n_drafts / (2 * sigma ** 2))


def randomized_response(outcomes: np.ndarray, flip_prob: float, rng: np.random.Generator) -> np.ndarray:
    """Flip each 0/1 entry independently with probability ``flip_prob``; same shape, dtype int8."""
    y = _check_outcomes(outcomes)
    flips = rng.random(y.shape) < flip_prob
    return np.bitwise_xor(y, flips.astype(np.int8))


def privatize(outcomes: np.ndarray, calibration: Calibration, rng: np.random.Generator) -> np.ndarray:
    """The counts a device may report: ``outcomes`` is ``(..., n_drafts, n_items)`` of 0/1; returns
    ``(..., n_drafts)`` float64 counts under ``calibration`` (exact counts for ``none``)."""
    y = _check_outcomes(outcomes)
    if y.ndim < 2 or y.shape[-2] != calibration.n_drafts:
        raise ConfigError("outcomes", f"expected shape (..., {calibration.n_drafts}, n_items), got {y.shape}")
    if calibration.mechanism == "randomized_response":
        noisy = randomized_response(y, calibration.flip_prob, rng)
        return noisy.sum(axis=-1, dtype=np.int64).astype(np.float64)
    counts = y.sum(axis=-1, dtype=np.int64).astype(np.float64)
    if calibration.mechanism == "laplace":
        return counts + rng.laplace(0.0, calibration.scale, size=counts.shape)
    if calibration.mechanism == "gaussian":
        return counts + rng.normal(0.0, calibration.scale, size=counts.shape)
    return counts


def _check_outcomes(outcomes: np.ndarray) -> np.ndarray:
    y = np.asarray(outcomes)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ConfigError("outcomes", "values must be 0 or 1")
    return y.astype(np.int8, copy=False)
