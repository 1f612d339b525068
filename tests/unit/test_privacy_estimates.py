"""The server side: unbiased estimates from reports, pooling with variances, cohort k-thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arte.errors import ConfigError, ReportContentError
from arte.privacy import (
    DraftEstimate,
    PrivacyAccountant,
    PrivacyPolicy,
    calibrate,
    cohort_threshold,
    debias_counts,
    estimate_report,
    pool_accuracy,
    pool_estimates,
    privatize,
    report_scores,
)
from arte.scoring import DraftScore, ScoreResult
from arte.wire import DraftScoreMsg, PrivacyInfo


def test_randomized_response_estimate_inverts_the_flip():
    cal = calibrate("randomized_response", 2.0, 0.0, 2)
    p = cal.flip_prob
    est = estimate_report([DraftScoreMsg("a", 20.0, 9.0), DraftScoreMsg("b", 20.0, 20.0)],
                          PrivacyInfo("randomized_response", 2.0))
    assert est[0].correct == pytest.approx((9 - p * 20) / (1 - 2 * p))
    assert est[1].correct == pytest.approx((20 - p * 20) / (1 - 2 * p))
    assert est[0].variance == pytest.approx(20 * p * (1 - p) / (1 - 2 * p) ** 2)
    assert est[0].accuracy == pytest.approx(est[0].correct / 20)


def test_additive_estimates_are_the_reports_with_the_mechanism_variance():
    lap = estimate_report([DraftScoreMsg("a", 20.0, -3.5)] * 1, PrivacyInfo("laplace", 0.5))
    assert lap[0].correct == -3.5 and lap[0].variance == pytest.approx(2 * (1 / 0.5) ** 2)
    gau = estimate_report([DraftScoreMsg("a", 20.0, 7.2), DraftScoreMsg("b", 20.0, 1.0)],
                          PrivacyInfo("gaussian", 1.0, 1e-6))
    assert gau[0].variance == pytest.approx(calibrate("gaussian", 1.0, 1e-6, 2).scale ** 2)
    none = estimate_report([DraftScoreMsg("a", 20.0, 7.0)], PrivacyInfo())
    assert none[0].correct == 7.0 and none[0].variance == 0.0


@pytest.mark.parametrize("scores,privacy,field", [
    ([], PrivacyInfo(), "scores"),
    ([DraftScoreMsg("a", 0.0, 0.0)], PrivacyInfo(), "scores[0].n_items"),
    ([DraftScoreMsg("a", 10.5, 1.0)], PrivacyInfo("laplace", 1.0), "scores[0].n_items"),
    ([DraftScoreMsg("a", 10.0, 7.5)], PrivacyInfo(), "scores[0].n_correct"),
    ([DraftScoreMsg("a", 10.0, 11.0)], PrivacyInfo("randomized_response", 1.0), "scores[0].n_correct"),
    ([DraftScoreMsg("a", 10.0, math.inf)], PrivacyInfo("laplace", 1.0), "scores[0].n_correct"),
    ([DraftScoreMsg("a", 10.0, 1.0)], PrivacyInfo("gaussian", 1.0), "privacy.delta"),
    ([DraftScoreMsg("a", 10.0, 1.0)], PrivacyInfo("laplace", -1.0), "privacy.epsilon"),
    ([DraftScoreMsg("a", 10.0, 1.0)], PrivacyInfo("shuffle", 1.0), "privacy.mechanism"),
])
def test_bad_reports_are_refused_naming_the_field(scores, privacy, field):
    with pytest.raises(ReportContentError) as e:
        estimate_report(scores, privacy)
    assert e.value.field == field


@pytest.mark.parametrize("policy", [PrivacyPolicy("randomized_response", 4.0), PrivacyPolicy("laplace", 1.0),
                                    PrivacyPolicy("gaussian", 1.0, 1e-6, total_delta=1e-6)])
def test_device_to_server_round_trip_is_unbiased(policy):
    """report_scores on the device -> estimate_report on the server, many times: the mean estimate is
    the true count within 5 standard errors."""
    outcomes = np.zeros((3, 25), dtype=np.int8)
    outcomes[0, :5] = outcomes[1, :15] = outcomes[2, :] = 1
    result = ScoreResult([DraftScore(f"d{i}", 25, int(outcomes[i].sum())) for i in range(3)],
                         [f"it{j}" for j in range(25)], outcomes, "loglik")
    rng = np.random.default_rng(99)
    ests = []
    for r in range(2000):
        rs = report_scores(result, policy, accountant=PrivacyAccountant(), round_id=f"r{r}", rng=rng)
        ests.append([e.correct for e in estimate_report(rs.scores, rs.privacy)])
    var = estimate_report(rs.scores, rs.privacy)[0].variance
    mean = np.mean(ests, axis=0)
    assert np.all(np.abs(mean - [5, 15, 25]) < 5 * math.sqrt(var / 2000))


def test_pooling_without_noise_is_the_micro_average():
    acc, var, noise = pool_accuracy(np.array([3.0, 10.0, 0.0]), np.array([10.0, 20.0, 5.0]), np.zeros(3))
    assert acc == pytest.approx(13 / 35)
    assert noise == 0.0
    a = 13 / 35
    assert var == pytest.approx(a * (1 - a) / 35)


def test_pooling_weights_ignore_the_reported_values():
    n = np.array([10.0, 40.0])
    v = np.array([50.0, 50.0])
    a1, _, _ = pool_accuracy(np.array([0.0, 0.0]), n, v)
    a2, _, _ = pool_accuracy(np.array([10.0, 0.0]), n, v)
    w = 1 / (0.25 / n + v / n ** 2)
    assert a2 - a1 == pytest.approx(w[0] * 1.0 / w.sum())


@pytest.mark.parametrize("mech", ["randomized_response", "laplace", "gaussian"])
def test_pooled_noise_variance_matches_simulation(mech):
    """Fixed devices (unequal sizes), many noisy fleets: the pooled accuracy is unbiased for the weighted
    mean of the devices' accuracies and its spread is the stated noise variance."""
    rng = np.random.default_rng(5)
    sizes = [10, 20, 40, 40, 80]
    truth = [3, 10, 30, 12, 40]
    cal = calibrate(mech, 2.0, 1e-5 if mech == "gaussian" else 0.0, 1)
    fleets = 20_000
    est = np.empty((len(sizes), fleets))
    var = np.empty(len(sizes))
    for i, (n, c) in enumerate(zip(sizes, truth)):
        y = np.zeros((fleets, 1, n), dtype=np.int8)
        y[:, :, :c] = 1
        e, v = debias_counts(privatize(y, cal, rng)[:, 0], n, cal)
        est[i], var[i] = e, v[0]
    acc, _, noise = pool_accuracy(est, np.array(sizes, float)[:, None], var[:, None])
    n = np.array(sizes, float)
    w = 1 / (0.25 / n + var / n ** 2)
    target = float(np.sum(w * np.array(truth) / n) / w.sum())
    assert np.allclose(noise, noise[0])
    assert abs(acc.mean() - target) < 5 * math.sqrt(noise[0] / fleets)
    assert acc.var() / noise[0] == pytest.approx(1.0, abs=5 * math.sqrt(5 / fleets))


def test_pool_estimates_per_draft_with_interval():
    reports = [[DraftEstimate("a", 20, 10.0, 8.0), DraftEstimate("b", 20, 4.0, 8.0)],
               [DraftEstimate("a", 20, 12.0, 8.0)]]
    pooled = pool_estimates(reports)
    a, b = pooled["a"], pooled["b"]
    assert (a.n_devices, a.n_items, b.n_devices) == (2, 40.0, 1)
    assert a.accuracy == pytest.approx(22 / 40)
    assert a.noise_variance == pytest.approx(2 * 8.0 / 20 ** 2 / 4)
    assert a.variance > a.noise_variance
    assert a.ci_low == pytest.approx(a.accuracy - 1.96 * math.sqrt(a.variance))
    assert a.ci_high == pytest.approx(a.accuracy + 1.96 * math.sqrt(a.variance))


def test_cohort_threshold():
    reported = {"dev1": ["a", "b"], "dev2": ["a", "b"], "dev3": ["a"], "dev4": []}
    ok = cohort_threshold(reported, 3)
    assert ok.allowed and ok.n_devices == 3 and ok.drafts == frozenset({"a"})
    few = cohort_threshold(reported, 4)
    assert not few.allowed and few.drafts == frozenset() and "3 device(s)" in few.reason
    split = cohort_threshold({"x": ["a"], "y": ["b"]}, 2)
    assert not split.allowed and "no draft" in split.reason
    assert cohort_threshold({"x": ["a", "a"]}, 1).allowed
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError) as e:
            cohort_threshold(reported, bad)  # type: ignore[arg-type]
        assert e.value.field == "min_devices"
