"""Preference pairs: s_r / s_q, quartile question pairs, argmax/argmin rationale pairs, ties, the noise rule
(intervals and paired), what is skipped and why, the no-signal result, JSONL."""

from __future__ import annotations

import json

import pytest

from arte.drafts import Draft
from arte.errors import ConfigError, PairFormatError
from arte.pair_rules import ScoreEstimate, binomial_estimate
from arte.pairs import (
    NO_SIGNAL,
    SKIP_REASONS,
    PairConfig,
    PreferencePair,
    build_pairs,
    pair_counts,
    pair_from_dict,
    read_pairs,
    score_table,
    select_pairs,
    write_pairs,
)
from arte.prompts import question_prompt, rationale_prompt
from arte.questions import draw_seeds, split_questions
from arte.tasks import Example, Task

OPTS = ("plausible", "implausible")
TASK = Task("sports", "Judge plausibility.", tuple(Example(f"s{i}", f"Seed {i}", ("plausible",), OPTS)
                                                   for i in range(4)))
SEEDS = TASK.examples
POINT = {"confidence": 0.0}   # point estimates: the structure of the pairs, without the noise rule


def q_text(q: int) -> str:
    return f"Statement: player {q} scored\nOptions: plausible, implausible"


def draft(q: int, r: int, rationale: str | None = None) -> Draft:
    return Draft(id=f"q{q}-r{r}", question=q_text(q), rationale=rationale or f"Reason {q}.{r} <ans>plausible</ans>",
                 answer="plausible", question_id=f"q{q}", style=f"r{r}", task="sports")


def test_score_table_clips_noise_and_excludes_by_reason() -> None:
    drafts = [draft(0, 0), draft(0, 1), draft(1, 0), draft(1, 1), draft(2, 0), draft(3, 0)]
    scores = {"q0-r0": (10, 7), "q0-r1": (10.0, 12.5),        # noised above n_items -> 1.0
              "q1-r0": (9.6, -0.4),                           # noised below 0 -> 0.0
              "q1-r1": (0.5, 0.5),                            # too few items
              "q2-r0": (float("nan"), 1.0)}                   # q3-r0 has no score
    t = score_table(drafts, scores, PairConfig(min_items=1.0))
    assert t.s_r == {"q0-r0": 0.7, "q0-r1": 1.0, "q1-r0": 0.0}
    assert t.s_q == pytest.approx({"q0": 0.85, "q1": 0.0})
    assert t.excluded == {"too_few_items": 1, "bad_score": 1, "no_score": 1}
    assert t.summary() == {"scored_drafts": 3, "scored_questions": 2,
                           "excluded": {"too_few_items": 1, "bad_score": 1, "no_score": 1}}


def test_question_pairs_top_vs_bottom_quartile() -> None:
    # 12 questions, one rationale each, s_q = q/11: top quartile q11,q10,q9, bottom q0,q1,q2.
    drafts = [draft(q, 0) for q in range(12)]
    scores = {f"q{q}-r0": (11, q) for q in range(12)}
    pairs = build_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("question",), questions_per_block=2, **POINT))
    assert [(p.chosen_ids, p.rejected_ids) for p in pairs] == [(("q11", "q10"), ("q0", "q1")), (("q9",), ("q2",))]
    p = pairs[0]
    assert p.kind == "question" and p.id == "qpair0000" and p.task == "sports"
    # the seeds shown are drawn as elicitation draws them (stratified, rotating), not the first three
    assert list(p.prompt) == question_prompt(TASK, draw_seeds(SEEDS, 3, 0, 0), 2)
    assert p.margin == pytest.approx((11 + 10) / 22 - (0 + 1) / 22)
    blocks, _ = split_questions(p.chosen)
    assert [b.strip() for b in blocks] == [q_text(11), q_text(10)]
    assert split_questions(p.rejected)[0][0].strip() == q_text(0)


def test_question_pairs_skip_ties_with_the_bottom() -> None:
    drafts = [draft(q, 0) for q in range(8)]
    # top-2 = q0 (1.0) and q1 (0.5); bottom-2 = q7, q6 with 0.5 and 0.0: q1 ties with q6 and is dropped.
    s = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0]
    scores = {f"q{q}-r0": (2, 2 * v) for q, v in enumerate(s)}
    res = select_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("question",), questions_per_block=5, **POINT))
    assert [(p.chosen_ids, p.rejected_ids) for p in res.pairs] == [(("q0",), ("q7",))]
    assert res.skipped == {"question": {"tie": 1}}
    all_equal = {f"q{q}-r0": (2, 1) for q in range(8)}
    assert build_pairs(TASK, drafts, all_equal, SEEDS, PairConfig(kinds=("question",), **POINT)) == []
    # with the noise rule, two items per question separate nothing
    noisy = select_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("question",)))
    assert noisy.pairs == [] and noisy.skipped == {"question": {"tie": 1, "below_noise": 1}}


def test_rationale_pairs_argmax_vs_argmin_with_tie_rules() -> None:
    drafts = [draft(0, r) for r in range(3)] + [draft(1, r) for r in range(2)] + [draft(2, 0)] + \
             [draft(3, 0, "Same text <ans>plausible</ans>"), draft(3, 1, "Same text <ans>plausible</ans>")] + \
             [draft(4, 0, "No tag here"), draft(4, 1)] + [draft(5, r) for r in range(3)]
    scores = {"q0-r0": (10, 5), "q0-r1": (10, 2), "q0-r2": (10, 9),
              "q1-r0": (10, 4), "q1-r1": (10, 4),                       # a tie: no pair
              "q2-r0": (10, 10),                                        # one rationale: no pair
              "q3-r0": (10, 10), "q3-r1": (10, 0),                      # identical texts: no pair
              "q4-r0": (10, 9), "q4-r1": (10, 1),
              "q5-r0": (10, 9), "q5-r1": (10, 9), "q5-r2": (10, 1)}     # two best: no tie-break by id
    res = select_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("rationale",), **POINT))
    pairs = res.pairs
    assert [(p.id, p.chosen_ids, p.rejected_ids) for p in pairs] == [
        ("rpair-q0", ("q0-r2",), ("q0-r1",)), ("rpair-q4", ("q4-r0",), ("q4-r1",))]
    assert res.skipped == {"rationale": {"tie": 1, "single_rationale": 1, "identical_texts": 1, "tied_extreme": 1}}
    p0, p4 = pairs
    assert p0.margin == pytest.approx(0.7) and p0.kind == "rationale"
    assert list(p0.prompt) == rationale_prompt(TASK, q_text(0), "plain")
    assert p0.chosen == "Reason 0.2 <ans>plausible</ans>" and p0.rejected == "Reason 0.1 <ans>plausible</ans>"
    assert p4.chosen == "No tag here <ans>plausible</ans>"     # the answer tag is added when missing
    strict = select_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("rationale",), min_margin=0.75, **POINT))
    assert [p.id for p in strict.pairs] == ["rpair-q4"] and strict.skipped["rationale"]["below_margin"] == 1


def test_ties_are_never_broken_by_item_count_or_id() -> None:
    # Before: equal best scores went to the draft with more items, then the smaller id.
    drafts = [draft(0, r) for r in range(3)]
    scores = {"q0-r0": (10, 1), "q0-r1": (20, 18), "q0-r2": (10, 9)}
    res = select_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("rationale",), **POINT))
    assert res.pairs == [] and res.skipped == {"rationale": {"tied_extreme": 1}} and res.outcome == NO_SIGNAL


def test_tied_rationales_produce_no_pair_and_say_why() -> None:
    # A student that answers the same whatever the demonstration: every draft scores 7/12, one answer dominates.
    drafts = [draft(q, r) for q in range(8) for r in range(2)]
    drafts = [d if d.id != "q0-r0" else Draft(**{**d.to_dict(), "answer": "implausible"}) for d in drafts]
    same = tuple([1] * 7 + [0] * 5)
    scores = {d.id: binomial_estimate(12, 7, outcomes=same) for d in drafts}
    res = select_pairs(TASK, drafts, scores, SEEDS)
    assert res.pairs == [] and res.outcome == NO_SIGNAL
    assert res.skipped == {"question": {"tie": 2}, "rationale": {"tie": 8}}
    d = res.to_dict()
    assert d["outcome"] == "no_signal" and d["n_pairs"] == 0 and d["counts"] == {"question": 0, "rationale": 0}
    sig = d["signal"]
    assert sig["drafts"] == 16 and sig["scored_drafts"] == 16 and sig["questions"] == 8
    assert sig["items"] == {"min": 12.0, "max": 12.0}
    assert sig["scores"] == {"min": pytest.approx(7 / 12), "max": pytest.approx(7 / 12), "mean": pytest.approx(7 / 12),
                             "spread": 0.0, "distinct": 1}
    assert sig["answers"] == {"plausible": 15, "implausible": 1}
    for text in ("no signal", "16 of 16 drafts", "12 items", "0.583-0.583", "'plausible': 15", "tie 8"):
        assert text in d["reason"]
    assert json.loads(json.dumps(d)) == d
    assert set(SKIP_REASONS) >= set(d["skipped"]["rationale"]) | set(d["skipped"]["question"])


def test_noisy_scores_below_the_margin_produce_no_pair() -> None:
    # 7/12 against 4/12: a pair from point estimates (as before), not beyond the binomial noise of 12 items.
    drafts = [draft(0, 0), draft(0, 1)]
    counts = {"q0-r0": (12, 7), "q0-r1": (12, 4)}
    assert len(build_pairs(TASK, drafts, counts, SEEDS, PairConfig(kinds=("rationale",), **POINT))) == 1
    res = select_pairs(TASK, drafts, counts, SEEDS, PairConfig(kinds=("rationale",)))
    assert res.pairs == [] and res.skipped == {"rationale": {"below_noise": 1}}
    assert res.comparisons == {"paired": 0, "intervals": 1}
    # The same difference on 400 items is beyond noise.
    many = {"q0-r0": (400, 7 * 400 / 12), "q0-r1": (400, 4 * 400 / 12)}
    assert len(build_pairs(TASK, drafts, many, SEEDS, PairConfig(kinds=("rationale",)))) == 1
    # The fleet: pooled scores whose variance carries local-DP noise. Far apart but too noisy: no pair;
    # the same scores with little noise: a pair.
    loud = {"q0-r0": ScoreEstimate(36, 0.8, 0.04), "q0-r1": ScoreEstimate(36, 0.3, 0.04)}
    quiet = {"q0-r0": ScoreEstimate(36, 0.8, 0.006), "q0-r1": ScoreEstimate(36, 0.3, 0.006)}
    cfg = PairConfig(kinds=("rationale",))
    assert build_pairs(TASK, drafts, loud, SEEDS, cfg) == [] and len(build_pairs(TASK, drafts, quiet, SEEDS, cfg)) == 1
    assert len(build_pairs(TASK, drafts, loud, SEEDS, PairConfig(kinds=("rationale",), confidence=0.5))) == 1


def test_paired_comparison_is_sharper_on_the_same_items() -> None:
    # 20 shared items; the outcomes agree except on 5, all in favour of r0: 15/20 against 10/20.
    drafts = [draft(0, 0), draft(0, 1)]
    a = (1,) * 10 + (1,) * 5 + (0,) * 5
    b = (1,) * 10 + (0,) * 5 + (0,) * 5
    scores = {"q0-r0": binomial_estimate(20, sum(a), outcomes=a), "q0-r1": binomial_estimate(20, sum(b), outcomes=b)}
    paired = select_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("rationale",)))
    assert [p.chosen_ids for p in paired.pairs] == [("q0-r0",)] and paired.comparisons["paired"] == 1
    apart = select_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("rationale",), comparison="intervals"))
    assert apart.pairs == [] and apart.skipped == {"rationale": {"below_noise": 1}}
    # Same counts, but the outcomes disagree everywhere they can (15 vs 10 with 15 discordant): noise.
    c = (1,) * 15 + (0,) * 5
    d = (0,) * 10 + (1,) * 10
    crossed = {"q0-r0": binomial_estimate(20, 15, outcomes=c), "q0-r1": binomial_estimate(20, 10, outcomes=d)}
    assert build_pairs(TASK, drafts, crossed, SEEDS, PairConfig(kinds=("rationale",))) == []


def test_rationales_scored_on_different_items_make_no_pair() -> None:
    drafts = [draft(0, 0), draft(0, 1), draft(1, 0), draft(1, 1)]
    scores = {"q0-r0": ScoreEstimate(30, 0.9, 0.001, unit="dev-a,dev-b"),
              "q0-r1": ScoreEstimate(30, 0.1, 0.001, unit="dev-a,dev-c"),
              "q1-r0": ScoreEstimate(30, 0.9, 0.001, unit="dev-a,dev-b"),
              "q1-r1": ScoreEstimate(30, 0.1, 0.001, unit="dev-a,dev-b")}
    res = select_pairs(TASK, drafts, scores, SEEDS, PairConfig(kinds=("rationale",)))
    assert [p.id for p in res.pairs] == ["rpair-q1"] and res.skipped == {"rationale": {"different_items": 1}}


def test_both_kinds_and_counts() -> None:
    drafts = [draft(q, r) for q in range(8) for r in range(2)]
    scores = {f"q{q}-r{r}": (8, q + r) for q in range(8) for r in range(2)}
    pairs = build_pairs(TASK, drafts, scores, SEEDS, PairConfig(**POINT))
    assert pair_counts(pairs) == {"question": 1, "rationale": 8}
    assert [p.kind for p in pairs][:1] == ["question"]


def test_jsonl_round_trip_and_trl_format(tmp_path) -> None:
    drafts = [draft(q, r) for q in range(8) for r in range(2)]
    scores = {f"q{q}-r{r}": (8, q * r) for q in range(8) for r in range(2)}
    pairs = build_pairs(TASK, drafts, scores, SEEDS, PairConfig(**POINT))
    assert pairs
    path = tmp_path / "pairs.jsonl"
    assert write_pairs(path, pairs) == len(pairs)
    assert read_pairs(path) == pairs
    assert [pair_from_dict(json.loads(json.dumps(p.to_dict()))) for p in pairs] == pairs   # e.g. a job spec
    trl = pairs[-1].to_trl()
    assert trl["prompt"][0]["role"] == "system" and trl["chosen"] == [{"role": "assistant", "content": pairs[-1].chosen}]
    first = json.loads(path.read_text().splitlines()[0])     # the file is TRL's conversational format as it is
    assert {k: first[k] for k in ("prompt", "chosen", "rejected")} == pairs[0].to_trl()


def test_pair_files_of_the_old_shape_are_read(tmp_path) -> None:
    """Files written before chosen/rejected became messages: plain strings."""
    pair = PreferencePair("g", "rationale", ({"role": "user", "content": "q"},), "c", "r", 0.5, ("a",), ("b",))
    old = {**{k: v for k, v in pair.to_dict().items() if not k.endswith("_from")}, "chosen": "c", "rejected": "r",
           "chosen_ids": ["a"], "rejected_ids": ["b"]}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n")
    assert read_pairs(path) == [pair]


@pytest.mark.parametrize("line, field", [
    ('{"id": "a", "kind": "poem", "chosen": "c", "rejected": "r", "prompt": [{"role": "user", "content": "x"}]}', "kind"),
    ('{"id": "a", "kind": "question", "chosen": "", "rejected": "r", "prompt": [{"role": "user", "content": "x"}]}', "chosen"),
    ('{"id": "a", "kind": "question", "chosen": "c", "rejected": "r", "prompt": []}', "prompt"),
    ('{"id": "a", "kind": "question", "chosen": [{"role": "user", "content": "c"}], "rejected": "r", '
     '"prompt": [{"role": "user", "content": "x"}]}', "chosen"),
    ('{"id": "a", "kind": "question", "chosen": "c", "rejected": [{"role": "assistant", "content": "r"}, '
     '{"role": "assistant", "content": "s"}], "prompt": [{"role": "user", "content": "x"}]}', "rejected"),
    ('{"id": "a", "kind": "question", "chosen": [{"role": "assistant", "content": " "}], "rejected": "r", '
     '"prompt": [{"role": "user", "content": "x"}]}', "chosen"),
    ('{"id": "a", "kind": "question", "chosen": "c", "rejected": "r", "prompt": [{"role": "user"}]}', "prompt"),
    ('{"id": "a", "kind": "question", "chosen": "c", "rejected": "r", "prompt": [{"role": "user", "content": "x"}],'
     ' "margin": "big"}', "margin"),
])
def test_bad_pair_lines_name_line_and_field(tmp_path, line: str, field: str) -> None:
    good = json.dumps(PreferencePair("g", "rationale", ({"role": "user", "content": "q"},), "c", "r", 0.5, ("a",),
                                     ("b",)).to_dict())
    path = tmp_path / "p.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(PairFormatError) as e:
        read_pairs(path)
    assert e.value.index == 2 and e.value.field == field and str(path) in str(e.value)


def test_duplicate_ids_and_bad_json(tmp_path) -> None:
    good = json.dumps(PreferencePair("g", "rationale", ({"role": "user", "content": "q"},), "c", "r", 0.5, (), ()).to_dict())
    path = tmp_path / "p.jsonl"
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(PairFormatError, match="duplicate id"):
        read_pairs(path)
    path.write_text("{nope\n")
    with pytest.raises(PairFormatError, match="invalid JSON"):
        read_pairs(path)


@pytest.mark.parametrize("kw, field", [({"kinds": ("poems",)}, "kinds"), ({"kinds": "question"}, "kinds"),
                                       ({"min_items": 0}, "min_items"), ({"min_margin": 1.0}, "min_margin"),
                                       ({"quartile": 0.75}, "quartile"), ({"questions_per_block": 0}, "questions_per_block"),
                                       ({"confidence": 1.0}, "confidence"), ({"confidence": -0.1}, "confidence"),
                                       ({"comparison": "vibes"}, "comparison")])
def test_config_errors_name_the_field(kw, field) -> None:
    with pytest.raises(ConfigError) as e:
        PairConfig(**kw)
    assert e.value.field == field


def test_question_pairs_need_seeds() -> None:
    with pytest.raises(ConfigError, match="seeds"):
        build_pairs(TASK, [draft(0, 0)], {}, (), PairConfig())
    assert build_pairs(TASK, [draft(0, 0)], {}, (), PairConfig(kinds=["rationale"])) == []


@pytest.mark.parametrize("kw, field", [({"n_items": 0, "score": 0.5, "variance": 0.1}, "score"),
                                       ({"n_items": 10, "score": 1.5, "variance": 0.1}, "score"),
                                       ({"n_items": 10, "score": float("nan"), "variance": 0.1}, "score"),
                                       ({"n_items": 3, "score": 0.5, "variance": 0.1, "outcomes": (1, 0)}, "outcomes")])
def test_bad_estimates_name_the_field(kw, field) -> None:
    with pytest.raises(ConfigError) as e:
        ScoreEstimate(**kw)
    assert e.value.field == field


def test_original_teacher_keeps_the_best_scored_rationale_of_each_question() -> None:
    from arte.pairs import preferred_rationales

    drafts = [draft(q, r) for q in range(3) for r in range(3)]
    scores = {"q0-r0": (10, 2), "q0-r1": (10, 9), "q0-r2": (10, 5),     # q0: r1 is best
              "q1-r0": (10, 6), "q1-r1": (10, 6), "q1-r2": (10, 1),     # q1: r0 and r1 tie for best
              "q2-r2": (10, 3)}                                          # q2: only r2 scored
    recs, info = preferred_rationales(drafts, scores)
    assert [d.id for d in recs] == ["q0-r1", "q1-r0", "q2-r2"]         # per question, in draft order
    assert info == {"questions": 3, "selected": 3, "tied_best": 1, "single": 1,
                    "mean_selected_score": pytest.approx((0.9 + 0.6 + 0.3) / 3), "excluded": {"no_score": 2}}
    # the choice follows the scores, not the draft order
    recs, _ = preferred_rationales(drafts, {**scores, "q0-r2": (10, 10)})
    assert recs[0].id == "q0-r2"
    assert preferred_rationales(drafts, {})[0] == []
