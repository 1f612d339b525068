"""Local DP mechanisms: calibration (privacy parameters), unbiasedness and variance, determinism."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from arte.errors import ConfigError
from arte.privacy import (
    PrivacyPolicy,
    analytic_gaussian_sigma,
    calibrate,
    classic_gaussian_sigma,
    debias_counts,
    gaussian_delta,
    privatize,
    randomized_response,
)

D, N = 4, 30
# A fixed device: 4 drafts x 30 items with different true counts (0, 7, 22, 30).
OUTCOMES = np.zeros((D, N), dtype=np.int8)
for _d, _c in enumerate((0, 7, 22, 30)):
    OUTCOMES[_d, :_c] = 1
TRUE = OUTCOMES.sum(axis=1).astype(float)


def _cal(mech: str, eps: float = 1.0, n_drafts: int = D):
    return calibrate(mech, eps, 1e-5 if mech == "gaussian" else 0.0, n_drafts)


@pytest.mark.parametrize("eps,n_drafts", [(0.5, 1), (1.0, 16), (4.0, 16), (8.0, 3)])
def test_randomized_response_flip_probability_gives_eps_over_d_per_bit(eps, n_drafts):
    cal = calibrate("randomized_response", eps, 0.0, n_drafts)
    assert cal.flip_prob == pytest.approx(1 / (1 + math.exp(eps / n_drafts)))
    # Per-bit likelihood ratio (1-p)/p is e^(eps/D); D bits per item compose to e^eps.
    assert math.log((1 - cal.flip_prob) / cal.flip_prob) * n_drafts == pytest.approx(eps)


def test_randomized_response_report_is_exactly_eps_dp_for_one_item():
    """Enumerate every output of a report on one item (D bits) and every pair of neighbouring item
    columns: the worst likelihood ratio is exactly e^eps."""
    eps, d = 1.5, 3
    p = calibrate("randomized_response", eps, 0.0, d).flip_prob
    cols = list(itertools.product((0, 1), repeat=d))

    def prob(out, col):
        return math.prod(p if o != c else 1 - p for o, c in zip(out, col))

    worst = max(math.log(prob(o, a) / prob(o, b)) for o in cols for a in cols for b in cols)
    assert worst == pytest.approx(eps)


def test_randomized_response_flips_at_the_calibrated_rate():
    rng = np.random.default_rng(1)
    y = np.zeros((200, 5000), dtype=np.int8)
    p = 0.3
    rate = randomized_response(y, p, rng).mean()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / y.size)
    ones = randomized_response(np.ones_like(y), p, rng).mean()
    assert abs(ones - (1 - p)) < 5 * math.sqrt(p * (1 - p) / y.size)


def test_laplace_scale_is_l1_sensitivity_over_eps():
    cal = calibrate("laplace", 2.0, 0.0, 16)
    assert cal.l1_sensitivity == 16 and cal.scale == pytest.approx(8.0)
    assert cal.count_variance(20) == pytest.approx(2 * 64)
    assert cal.rho == pytest.approx(2.0 ** 2 / (2 * 16))


def test_laplace_density_ratio_is_bounded_by_eps_for_neighbours():
    """Changing one item moves each of the D counts by at most 1: the log density ratio of the report is
    at most sum|dc|/b <= D/b = eps, and reaches it."""
    eps, d = 1.0, 16
    b = calibrate("laplace", eps, 0.0, d).scale
    rng = np.random.default_rng(0)
    c = rng.integers(0, 20, size=d).astype(float)
    worst = 0.0
    for _ in range(200):
        c2 = c + rng.choice((-1.0, 0.0, 1.0), size=d)
        z = rng.normal(c, 30, size=(500, d))
        ratio = (np.abs(z - c2).sum(axis=1) - np.abs(z - c).sum(axis=1)) / b
        worst = max(worst, ratio.max())
    assert worst <= eps + 1e-12
    z_far = c + 1000.0
    assert (np.abs(z_far - (c - 1)).sum() - np.abs(z_far - c).sum()) / b == pytest.approx(eps)


@pytest.mark.parametrize("eps,delta,sens", [(0.5, 1e-5, 1.0), (1.0, 1e-6, 4.0), (4.0, 1e-6, 4.0),
                                            (10.0, 1e-8, 2.0)])
def test_analytic_gaussian_sigma_is_the_smallest_that_meets_delta(eps, delta, sens):
    sigma = analytic_gaussian_sigma(eps, delta, sens)
    assert gaussian_delta(sigma, eps, sens) <= delta
    assert gaussian_delta(sigma * (1 - 1e-6), eps, sens) > delta
    if eps < 1:
        assert sigma < classic_gaussian_sigma(eps, delta, sens)


@pytest.mark.parametrize("eps,sigma", [(0.5, 3.0), (1.0, 4.0), (2.0, 2.5)])
def test_gaussian_delta_matches_the_privacy_loss_distribution(eps, sigma):
    """Independent check of Balle & Wang's formula: the privacy loss L of N(0, σ²) with sensitivity Δ
    is N(η, 2η), η = Δ²/2σ², and δ(ε) = E[(1 − e^{ε−L})₊]; integrated numerically."""
    sens = 2.0
    eta = sens ** 2 / (2 * sigma ** 2)
    sd = math.sqrt(2 * eta)
    x = np.linspace(eta - 40 * sd, eta + 40 * sd, 2_000_001)
    pdf = np.exp(-0.5 * ((x - eta) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    integrand = np.clip(1 - np.exp(eps - x), 0, None) * pdf
    numeric = float(np.sum(integrand) * (x[1] - x[0]))
    assert gaussian_delta(sigma, eps, sens) == pytest.approx(numeric, rel=1e-4, abs=1e-12)


def test_gaussian_calibration_uses_l2_sensitivity_sqrt_d():
    cal = calibrate("gaussian", 1.0, 1e-6, 16)
    assert cal.l2_sensitivity == 4.0
    assert cal.scale == pytest.approx(analytic_gaussian_sigma(1.0, 1e-6, 4.0))
    assert cal.rho == pytest.approx(16 / (2 * cal.scale ** 2))
    assert cal.count_variance(20) == pytest.approx(cal.scale ** 2)


@pytest.mark.parametrize("mech", ["randomized_response", "laplace", "gaussian"])
def test_debiased_counts_are_unbiased_with_the_stated_variance(mech):
    """Mean over many reports within 5 standard errors of the truth; empirical variance of the estimate
    within 5 standard errors (of a sample variance) of the stated one."""
    cal = _cal(mech, eps=2.0)
    rng = np.random.default_rng(1234)
    reps = 40_000
    noisy = privatize(np.broadcast_to(OUTCOMES, (reps, D, N)), cal, rng)
    est, var = debias_counts(noisy, N, cal)
    assert var.shape == est.shape and np.allclose(var, var[0])
    se = np.sqrt(var[0] / reps)
    assert np.all(np.abs(est.mean(axis=0) - TRUE) < 5 * se)
    kurtosis = {"laplace": 6.0, "gaussian": 3.0, "randomized_response": 3.0}[mech]
    rel_se = math.sqrt((kurtosis - 1) / reps)
    assert np.all(np.abs(est.var(axis=0) / var[0] - 1) < 5 * rel_se)


def test_randomized_response_variance_formula():
    cal = calibrate("randomized_response", 4.0, 0.0, 4)
    p = cal.flip_prob
    _, var = debias_counts(np.array([10.0]), 30, cal)
    assert var[0] == pytest.approx(30 * p * (1 - p) / (1 - 2 * p) ** 2)


def test_none_reports_exact_counts_and_no_variance():
    cal = calibrate("none", None, 0.0, D)
    out = privatize(OUTCOMES, cal, np.random.default_rng(0))
    assert np.array_equal(out, TRUE)
    est, var = debias_counts(out, N, cal)
    assert np.array_equal(est, TRUE) and np.all(var == 0)


@pytest.mark.parametrize("mech", ["randomized_response", "laplace", "gaussian"])
def test_privatize_is_deterministic_for_a_seed_and_batches(mech):
    cal = _cal(mech)
    a = privatize(OUTCOMES, cal, np.random.default_rng(7))
    b = privatize(OUTCOMES, cal, np.random.default_rng(7))
    c = privatize(OUTCOMES, cal, np.random.default_rng(8))
    assert a.shape == (D,) and np.array_equal(a, b) and not np.array_equal(a, c)
    batch = privatize(np.stack([OUTCOMES] * 3), cal, np.random.default_rng(7))
    assert batch.shape == (3, D)


def test_randomized_response_reports_whole_counts_within_range():
    out = privatize(OUTCOMES, _cal("randomized_response"), np.random.default_rng(3))
    assert np.all(out == np.round(out)) and np.all((out >= 0) & (out <= N))


def test_privatize_rejects_bad_outcomes():
    with pytest.raises(ConfigError, match="outcomes"):
        privatize(OUTCOMES * 2, _cal("laplace"), np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"\(\.\.\., 4, n_items\)"):
        privatize(OUTCOMES[:3], _cal("laplace"), np.random.default_rng(0))


@pytest.mark.parametrize("kwargs,field", [
    ({"mechanism": "shuffle"}, "mechanism"),
    ({"mechanism": "none", "epsilon": 1.0}, "epsilon"),
    ({"mechanism": "laplace"}, "epsilon"),
    ({"mechanism": "laplace", "epsilon": 0.0}, "epsilon"),
    ({"mechanism": "laplace", "epsilon": math.inf}, "epsilon"),
    ({"mechanism": "laplace", "epsilon": 1.0, "delta": 1e-6, "total_delta": 1e-6}, "delta"),
    ({"mechanism": "gaussian", "epsilon": 1.0}, "delta"),
    ({"mechanism": "gaussian", "epsilon": 1.0, "delta": 1.5}, "delta"),
    ({"mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6, "total_delta": 0.0}, "total_delta"),
    ({"mechanism": "laplace", "epsilon": 2.0, "total_epsilon": 1.0}, "total_epsilon"),
    ({"mechanism": "laplace", "epsilon": 1.0, "total_epsilon": 0.0}, "total_epsilon"),
])
def test_policy_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        PrivacyPolicy(**kwargs)
    assert e.value.field == field


def test_valid_policies():
    assert PrivacyPolicy().mechanism == "none"
    PrivacyPolicy("randomized_response", 1.0, total_epsilon=10.0)
    PrivacyPolicy("gaussian", 1.0, 1e-6, total_epsilon=10.0, total_delta=1e-5)
    with pytest.raises(ConfigError, match="n_drafts"):
        calibrate("laplace", 1.0, 0.0, 0)
