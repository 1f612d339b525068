"""The aggregation function: unbiased per-draft estimates from (noised) reports, pooled with public
weights, variances and intervals that hold, and the k-threshold that decides what may drive alignment."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arte.privacy import calibrate, cohort_threshold, privatize
from server.aggregation import ScoreRow, aggregate, stored_decision

LAPLACE = {"mechanism": "laplace", "epsilon": 1.0, "delta": None}


def noised_rows(device: str, outcomes: np.ndarray, privacy: dict, rng: np.random.Generator) -> list[ScoreRow]:
    """What a device stores after arte.privacy noised its draft x item outcome matrix."""
    cal = calibrate(
        privacy["mechanism"], privacy.get("epsilon"), privacy.get("delta") or 0.0, outcomes.shape[0]
    )
    counts = privatize(outcomes, cal, rng)
    return [
        ScoreRow(device, f"d{j}", float(outcomes.shape[1]), float(c), privacy) for j, c in enumerate(counts)
    ]


def test_exact_counts_are_weighted_by_items_not_by_device() -> None:
    rows = [ScoreRow("a", "d0", 10, 9), ScoreRow("b", "d0", 90, 9), ScoreRow("a", "d1", 4, 1)]
    agg = aggregate(rows, min_devices=2)
    d0 = agg.drafts["d0"]
    assert d0.score == pytest.approx(18 / 100)  # not the device mean (0.9 + 0.1) / 2
    assert d0.n_devices == 2 and agg.drafts["d1"].n_devices == 1
    assert (d0.n_items, d0.n_correct, d0.noise_variance) == (100, 18, 0)
    assert d0.variance == pytest.approx(0.18 * 0.82 / 100)  # item sampling only, no noise
    assert d0.ci_low < 0.18 < d0.ci_high
    assert agg.n_devices == 2 and agg.meets_k and agg.may_align and agg.excluded == {}
    assert list(agg.scores()) == ["d0", "d1"]
    assert d0.eligible and not agg.drafts["d1"].eligible
    assert agg.alignment_scores() == {"d0": pytest.approx(0.18)}  # d1 was scored by one device only


def test_k_counts_distinct_devices_and_refuses_alignment_below_it() -> None:
    rows = [ScoreRow("a", f"d{i}", 5, 2) for i in range(5)]
    agg = aggregate(rows, min_devices=2)
    assert agg.n_devices == 1 and not agg.meets_k and not agg.may_align
    assert agg.alignment_scores() == {} and "at least 2" in agg.reason
    with pytest.raises(ValueError, match="min_devices"):
        aggregate(rows, min_devices=0)


def test_k_devices_but_no_draft_scored_by_k_of_them() -> None:
    rows = [ScoreRow("a", "d0", 5, 2), ScoreRow("b", "d1", 5, 3)]
    agg = aggregate(rows, min_devices=2)
    assert agg.meets_k and not agg.may_align and agg.alignment_scores() == {}
    assert "no draft was scored by 2" in agg.reason


def test_empty_round() -> None:
    agg = aggregate([], min_devices=1)
    assert agg.n_devices == 0 and agg.drafts == {} and not agg.meets_k and not agg.may_align


def test_laplace_counts_are_kept_as_is_and_the_score_clipped_after_pooling() -> None:
    rows = [
        ScoreRow("a", "d0", 10, 10.7, LAPLACE),
        ScoreRow("a", "d1", 10, -0.4, LAPLACE),
        ScoreRow("b", "d0", 10, 9.9, LAPLACE),
        ScoreRow("b", "d1", 10, 1.2, LAPLACE),
    ]
    agg = aggregate(rows, min_devices=1)
    d0, d1 = agg.drafts["d0"], agg.drafts["d1"]
    assert d0.n_correct == pytest.approx(20.6) and d0.accuracy == pytest.approx(1.03) and d0.score == 1.0
    assert d1.accuracy == pytest.approx(0.04) and d1.score == pytest.approx(0.04)
    # Laplace scale D/eps = 2 per count: variance 8 per device; two equal devices -> 8 * 2 / 20^2
    assert d0.noise_variance == pytest.approx(2 * 8 / 20**2)
    assert d0.ci_high - d0.ci_low == pytest.approx(2 * 1.96 * d0.variance**0.5)


def test_randomized_response_is_inverted_where_the_naive_mean_is_biased() -> None:
    rng = np.random.default_rng(7)
    truth = np.array([0.9, 0.5, 0.2, 0.7])
    rr = {"mechanism": "randomized_response", "epsilon": 2.0, "delta": None}
    rows = []
    for i in range(300):
        outcomes = (rng.random((4, 20)) < truth[:, None]).astype(np.int8)
        rows += noised_rows(f"dev{i}", outcomes, rr, rng)
    agg = aggregate(rows, min_devices=10)
    p = calibrate("randomized_response", 2.0, 0.0, 4).flip_prob
    for j, t in enumerate(truth):
        a = agg.drafts[f"d{j}"]
        naive = sum(r.n_correct for r in rows if r.draft_id == f"d{j}") / (300 * 20)
        assert naive == pytest.approx(p + (1 - 2 * p) * t, abs=0.02)  # biased towards 1/2
        assert abs(a.accuracy - t) < 3 * a.variance**0.5 < 0.1  # the estimate is not
        assert a.noise_variance > 0 and a.variance > a.noise_variance


@pytest.mark.parametrize(
    "privacy",
    [
        {"mechanism": "gaussian", "epsilon": 2.0, "delta": 1e-6},
        {"mechanism": "randomized_response", "epsilon": 4.0, "delta": None},
        {"mechanism": "none", "epsilon": None, "delta": None},
    ],
)
def test_the_95_percent_interval_covers_the_truth_about_95_percent_of_the_time(privacy: dict) -> None:
    rng = np.random.default_rng(11)
    truth = 0.65
    hits = trials = 0
    for _ in range(300):
        rows = []
        for i in range(8):
            outcomes = (rng.random((3, 15)) < truth).astype(np.int8)
            rows += noised_rows(f"dev{i}", outcomes, privacy, rng)
        for a in aggregate(rows, min_devices=1).drafts.values():
            hits += a.ci_low <= truth <= a.ci_high
            trials += 1
    assert 0.92 <= hits / trials <= 0.98, hits / trials


def test_devices_with_different_noise_are_pooled_with_public_weights() -> None:
    gauss = {"mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6}
    rows = [ScoreRow("exact", "d0", 20, 15), ScoreRow("noisy", "d0", 20, 3.0, gauss)]
    agg = aggregate(rows, min_devices=2)
    sigma2 = calibrate("gaussian", 1.0, 1e-6, 1).scale ** 2
    w_exact, w_noisy = 1 / (0.25 / 20), 1 / (0.25 / 20 + sigma2 / 400)
    expected = (w_exact * 15 / 20 + w_noisy * 3 / 20) / (w_exact + w_noisy)
    assert agg.drafts["d0"].accuracy == pytest.approx(expected)
    assert agg.drafts["d0"].noise_variance == pytest.approx(
        w_noisy**2 * sigma2 / 400 / (w_exact + w_noisy) ** 2
    )


def test_a_report_its_mechanism_cannot_have_produced_is_left_out_and_named() -> None:
    rr = {"mechanism": "randomized_response", "epsilon": 1.0, "delta": None}
    rows = [ScoreRow("old", "d0", 9.5, 3), ScoreRow("rr", "d0", 10, 2.5, rr), ScoreRow("ok", "d0", 10, 4)]
    agg = aggregate(rows, min_devices=1)
    assert set(agg.excluded) == {"old", "rr"} and "n_items" in agg.excluded["old"]
    assert "n_correct" in agg.excluded["rr"]
    assert agg.n_devices == 1 and agg.drafts["d0"].score == pytest.approx(0.4)


rows_strategy = st.dictionaries(
    st.tuples(st.sampled_from("abcde"), st.sampled_from(["d0", "d1", "d2"])),
    st.tuples(st.integers(1, 50), st.integers(0, 50)),
    max_size=15,
)


@given(rows_strategy, st.integers(1, 4))
def test_exact_counts_give_the_micro_average_and_the_threshold_of_arte_privacy(raw, k) -> None:
    rows = [ScoreRow(dev, d, n, min(c, n)) for (dev, d), (n, c) in raw.items()]
    agg = aggregate(rows, min_devices=k)
    for draft, a in agg.drafts.items():
        n = sum(r.n_items for r in rows if r.draft_id == draft)
        c = sum(r.n_correct for r in rows if r.draft_id == draft)
        assert a.score == pytest.approx(c / n) and a.n_correct == c and a.noise_variance == 0
    reported: dict[str, list[str]] = {}
    for r in rows:
        reported.setdefault(r.device_id, []).append(r.draft_id)
    decision = cohort_threshold(reported, k)
    assert (agg.may_align, agg.reason) == (decision.allowed, decision.reason)
    assert {d for d, a in agg.drafts.items() if a.eligible} == set(decision.drafts)
    # a stored aggregate (its to_dict counts) gives the same decision
    stored = stored_decision(agg.n_devices, k, {d: a.to_dict() for d, a in agg.drafts.items()})
    assert stored == (decision.allowed, decision.reason, set(decision.drafts) if decision.allowed else set())


def test_alignment_estimates_carry_the_pooled_noise_and_the_devices_as_the_unit() -> None:
    """What alignment reads: the pooled score with its pooled variance (local-DP noise included) and, as
    the unit, the devices that scored the draft. Under Laplace noise two drafts whose true scores are far
    apart still make no rationale pair when the noise covers the gap; without noise they do."""
    from arte.drafts import Draft
    from arte.pairs import PairConfig, select_pairs
    from arte.tasks import Example, Task

    def rows(privacy: dict) -> list[ScoreRow]:
        return [ScoreRow(dev, d, 12, c, privacy) for dev in ("a", "b") for d, c in (("d0", 9), ("d1", 4), ("d2", 9))]

    plain = aggregate(rows({}), min_devices=2).alignment_estimates()
    noisy = aggregate(rows(LAPLACE), min_devices=2).alignment_estimates()
    assert plain["d0"].variance == pytest.approx(0.75 * 0.25 / 24) and plain["d0"].unit == "a,b"
    assert noisy["d0"].variance > 5 * plain["d0"].variance and noisy["d0"].score == pytest.approx(0.75)
    task = Task("t", "", (Example("s", "x", ("yes",), ("yes", "no")),))
    drafts = [Draft(f"d{i}", "Q?", f"R{i} <ans>yes</ans>", "yes", question_id="q") for i in range(2)]
    cfg = PairConfig(kinds=("rationale",))
    assert [p.chosen_ids for p in select_pairs(task, drafts, plain, (), cfg).pairs] == [("d0",)]
    assert select_pairs(task, drafts, noisy, (), cfg).skipped == {"rationale": {"below_noise": 1}}
    # a third device that scored d2 only makes d2's unit differ from d0's
    more = aggregate(rows({}) + [ScoreRow("c", "d2", 12, 9)], min_devices=2).alignment_estimates()
    assert more["d2"].unit == "a,b,c" and more["d0"].unit == "a,b"
