import numpy as np
import pytest

from arte.errors import ConfigError
from arte.irt import fit_2pl, select_items, selection_agreement


def _simulate(n=80, m=60, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1, n)
    a = rng.uniform(0.2, 3.0, m)
    b = rng.normal(0, 1, m)
    p = 1 / (1 + np.exp(-a[None] * (theta[:, None] - b[None])))
    return (rng.random((n, m)) < p).astype(float), theta, a, b


def test_recovers_parameters_from_simulated_responses() -> None:
    y, theta, a, b = _simulate()
    fit = fit_2pl(y)
    assert np.corrcoef(fit.theta, theta)[0, 1] > 0.85
    assert np.corrcoef(fit.a, a)[0, 1] > 0.6
    assert np.corrcoef(fit.b, b)[0, 1] > 0.8
    top = set(select_items(fit, 15).tolist())
    assert len(top & set(np.argsort(-a)[:20].tolist())) >= 9


def test_missing_outcomes_are_ignored() -> None:
    y, theta, *_ = _simulate(seed=1)
    y[np.random.default_rng(2).random(y.shape) < 0.2] = np.nan
    fit = fit_2pl(y)
    assert np.isfinite(fit.theta).all() and np.corrcoef(fit.theta, theta)[0, 1] > 0.8


def test_agreement_is_one_on_all_items_and_counts_groups() -> None:
    y, *_ = _simulate(n=12, m=30, seed=3)
    groups = [f"q{i // 4}" for i in range(12)]
    full = selection_agreement(y, range(30), groups)
    assert full == {"best": 1.0, "worst": 1.0, "groups": 3}
    few = selection_agreement(y, [0], groups)
    assert 0.0 <= few["best"] <= 1.0 and few["groups"] == 3


def test_agreement_detects_disagreement() -> None:
    y = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=float)
    # On item 3 alone the best is draft 1, but on all items draft 2 is best.
    assert selection_agreement(y, [3])["best"] == 0.0
    assert selection_agreement(y, [0, 1, 2])["best"] == 1.0


def test_validation() -> None:
    with pytest.raises(ConfigError, match="outcomes"):
        fit_2pl(np.array([[0.5, 1.0], [1.0, 0.0]]))
    with pytest.raises(ConfigError, match="outcomes"):
        fit_2pl(np.ones((1, 3)))
    fit = fit_2pl(np.array([[1, 0], [0, 1], [1, 1.0]]))
    with pytest.raises(ConfigError, match="k"):
        select_items(fit, 3)
