"""Planted preferences: the properties, the scorer's rates (statistically, fixed seed), reversed and null,
and what the scores make downstream (pairs in the rule's direction)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arte.drafts import Draft
from arte.errors import ConfigError
from arte.pair_rules import binomial_estimate
from arte.pairs import PairConfig, select_pairs
from arte.planted import PlantedRule, draft_holds, holds, planted_scores, rule_rate
from arte.tasks import Example, Task
from tests.support.teacher_fakes import planted_drafts

SHORT = "Yes. <ans>yes</ans>"
LONG = " ".join(["word"] * 60) + " <ans>yes</ans>"
STEPS = "1. Read the question.\n2. Compare.\n3. Decide. <ans>no</ans>"
TASK = Task("t", "Answer.", tuple(Example(f"e{i}", f"Is {i} even?", ("yes" if i % 2 == 0 else "no",), ("yes", "no"))
                                  for i in range(6)))


def test_properties() -> None:
    short = PlantedRule("short", max_words=10)
    assert holds(short, SHORT) and not holds(short, LONG)
    assert holds(short, " ".join(["w"] * 10) + " <ans>a</ans>") and not holds(short, " ".join(["w"] * 11))
    steps = PlantedRule("steps")
    assert holds(steps, STEPS) and holds(steps, "Step 1: a\nStep 2: b") and not holds(steps, SHORT)
    assert not holds(steps, "1. only one step <ans>x</ans>")
    early = PlantedRule("answer_early", answer_chars=10)
    assert holds(early, SHORT) and not holds(early, LONG) and not holds(early, "no tag at all")
    qty = PlantedRule("quantity")
    assert qty.target == "question" and short.target == "rationale"
    assert draft_holds(qty, Draft("d", "How many of 12 apples?", SHORT, "yes"))
    assert not draft_holds(qty, Draft("d", "Is the sky blue?", SHORT, "yes"))
    assert rule_rate(short, [SHORT, LONG, SHORT]) == pytest.approx(2 / 3) and math.isnan(rule_rate(short, []))


def test_rates_and_variants() -> None:
    r = PlantedRule("short", strength=0.6, base=0.5)
    assert (r.rate(True), r.rate(False)) == pytest.approx((0.8, 0.2))
    rev = PlantedRule("short", "reversed", strength=0.6, base=0.5)
    assert (rev.rate(True), rev.rate(False)) == pytest.approx((0.2, 0.8)) and rev.name == "short-reversed"
    null = PlantedRule("short", "null", strength=0.6, base=0.5)
    assert null.rate(True) == null.rate(False) == 0.5 and null.name == "short-null"


@pytest.mark.parametrize("field, value", [("rule", "nope"), ("variant", "x"), ("strength", 0.0),
                                          ("strength", 1.5), ("base", 0.9), ("noise", -0.1), ("max_words", 0)])
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        PlantedRule(**{field: value})
    assert e.value.field == field


@pytest.mark.parametrize("variant, with_prop, without", [("planted", 0.8, 0.2), ("reversed", 0.2, 0.8),
                                                         ("null", 0.5, 0.5)])
def test_scores_are_binomial_at_the_rule_rates(variant: str, with_prop: float, without: float) -> None:
    rule = PlantedRule("short", variant, strength=0.6, base=0.5, max_words=10)
    ds = planted_drafts(200)
    res = planted_scores(ds, rule, 20, np.random.default_rng(0))
    assert res.outcomes.shape == (400, 20) and res.mode == "planted" and len(res.item_ids) == 20
    assert all(s.n_correct == int(row.sum()) and s.n_items == 20 for s, row in zip(res.scores, res.outcomes))
    acc = np.array([s.n_correct / 20 for s in res.scores])
    has = np.array([draft_holds(rule, d) for d in ds])
    # 200 planted_drafts x 20 items per group: sd of the mean <= sqrt(.25 / 4000) = 0.008; 0.03 is ~4 sd
    assert acc[has].mean() == pytest.approx(with_prop, abs=0.03)
    assert acc[~has].mean() == pytest.approx(without, abs=0.03)
    # the per-draft counts are binomial(20, p): their variance is 20 p (1 - p) (not e.g. all equal)
    counts = np.array([s.n_correct for s in res.scores])[has]
    assert counts.var() == pytest.approx(20 * with_prop * (1 - with_prop), rel=0.25)


def test_noise_spreads_the_rates_and_the_seed_reproduces() -> None:
    rule = PlantedRule("short", strength=0.4, noise=0.2, max_words=10)
    ds = planted_drafts(200)
    a = planted_scores(ds, rule, 20, np.random.default_rng(3))
    b = planted_scores(ds, rule, 20, np.random.default_rng(3))
    assert np.array_equal(a.outcomes, b.outcomes)
    plain = planted_scores(ds, PlantedRule("short", strength=0.4, max_words=10), 20, np.random.default_rng(3))
    assert np.var([s.n_correct for s in a.scores]) > 1.3 * np.var([s.n_correct for s in plain.scores])


def _pairs(variant: str, seed: int = 0) -> list:
    rule = PlantedRule("short", variant, strength=0.6, max_words=10)
    ds = planted_drafts(40)
    res = planted_scores(ds, rule, 20, np.random.default_rng(seed))
    est = {s.draft_id: binomial_estimate(s.n_items, s.n_correct, outcomes=list(row))
           for s, row in zip(res.scores, res.outcomes)}
    return select_pairs(TASK, ds, est, TASK.examples[:3], PairConfig(kinds=("rationale",))).pairs


def test_pairs_follow_the_planted_direction() -> None:
    planted, rev, null = _pairs("planted"), _pairs("reversed"), _pairs("null")
    assert len(planted) >= 20 and all(p.chosen == SHORT for p in planted)
    assert len(rev) >= 20 and all(p.chosen == LONG for p in rev)
    # random scores: few pairs pass the noise rule (about 10% at confidence 0.9), either way round
    assert len(null) <= 10
