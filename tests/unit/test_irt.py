import json

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


def _label_copying(seed: int = 0):
    """Drafts of a label-copying student: a draft gets an item right when the item's label is the draft's
    answer (10% noise). Most drafts answer A, so A items discriminate positively, B items negatively."""
    rng = np.random.default_rng(seed)
    labels = np.array(["A"] * 10 + ["B"] * 10)
    answers = np.array(["A"] * 9 + ["B"] * 3)
    y = (answers[:, None] == labels[None, :]).astype(float)
    return np.where(rng.random(y.shape) < 0.1, 1 - y, y), labels


def test_selection_is_label_balanced_for_a_label_copying_student() -> None:
    y, labels = _label_copying()
    fit = fit_2pl(y)
    signed = np.argsort(-fit.a, kind="stable")[:8]
    assert set(labels[signed]) == {"A"}                       # ranking by signed a keeps one label
    kept = select_items(fit, 8, list(labels))
    assert sorted(labels[kept].tolist()) == ["A"] * 4 + ["B"] * 4
    assert len(set(kept.tolist())) == 8
    a = np.abs(fit.a[kept])
    assert np.all(a[:-1] >= a[1:])                            # most discriminative first
    # within each label, the kept items are its most discriminative ones
    for lab in ("A", "B"):
        idx = np.flatnonzero(labels == lab)
        best = set(idx[np.argsort(-np.abs(fit.a[idx]), kind="stable")[:4]].tolist())
        assert set(kept[labels[kept] == lab].tolist()) == best


def test_selection_ranks_by_absolute_discrimination_and_balances_where_items_allow() -> None:
    from arte.irt import IRTFit

    fit = IRTFit(theta=np.zeros(3), a=np.array([0.5, -3.0, 2.0, 1.0, -0.1, 0.2]), b=np.zeros(6),
                 log_posterior=0.0, iterations=1)
    assert select_items(fit, 3).tolist() == [1, 2, 3]
    # labels: item 4 is the only "y"; "z" has two items
    labels = ["x", "x", "x", "x", "y", "z"]
    assert select_items(fit, 3, labels).tolist() == [1, 5, 4]
    assert select_items(fit, 5, labels).tolist() == [1, 2, 3, 5, 4]
    with pytest.raises(ConfigError, match="labels"):
        select_items(fit, 3, ["x"])


def test_choose_items_is_the_whole_step_with_its_balance_check() -> None:
    from arte.irt import choose_items

    y, labels = _label_copying()
    ids = [f"i{j}" for j in range(len(labels))]
    groups = [f"q{d // 2}" for d in range(len(y))]
    rec = choose_items(y, ids, 8, list(labels), groups)
    assert len(rec["selected"]) == 8 and set(rec["selected"]) <= set(ids)
    assert rec["labels"] == {"A": 4, "B": 4} and rec["labels_of_all"] == {"A": 10, "B": 10} and rec["balanced"]
    assert rec["n_items"] == 20 and rec["n_drafts"] == 12 and rec["agreement"]["groups"] == 6
    a = [abs(x) for x in rec["discrimination"]]
    assert a == sorted(a, reverse=True)
    json.dumps(rec)   # JSON-ready
    # a label with too few items cannot be balanced: said, not hidden
    few = ["A"] * 19 + ["B"]
    rec = choose_items(y, ids, 8, few)
    assert rec["labels"] == {"A": 7, "B": 1} and rec["balanced"] is False
    assert "labels" not in choose_items(y, ids, 8)
    with pytest.raises(ConfigError, match="item_ids"):
        choose_items(y, ids[:3], 2)
