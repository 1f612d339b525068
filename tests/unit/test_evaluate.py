"""Holdout evaluation over the Student protocol (fake student, character tokenizer) and the keep rule."""

from __future__ import annotations

import re
from typing import Sequence

import pytest

from arte.drafts import Draft
from arte.errors import ConfigError, ScoringError
from arte.evaluate import EvalConfig, evaluate, keep_if_better, mcnemar_p, pick_demos
from arte.sft_data import OPENER, ChatFormat
from arte.student import Continuation, Generation, reason_then_loglik
from arte.tasks import Example, Task
from tests.support.sft_fakes import CharTokenizer

TOK = CharTokenizer()
TASK = Task("t", "Say yes or no.", ())
ITEMS = [Example(f"i{i}", f"item {i}", ("yes" if i % 2 else "no",), ("yes", "no")) for i in range(6)]
DEMOS = [Draft(id=f"d{i}", question=f"demo {i}", rationale="Because. <ans>yes</ans>", answer="yes") for i in range(3)]


class LookupStudent:
    """Answers 'yes' to every item; with demonstrations in the prompt it answers correctly (items with an
    odd number are 'yes'). Reads prompts with the character tokenizer."""

    name = "lookup"
    n_ctx = 1 << 16

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        return TOK(text)["input_ids"]

    def _answer(self, prompt: str) -> str:
        self.prompts.append(prompt)
        n = int(re.findall(r"Question: item (\d+)", prompt)[-1])
        shown = prompt.count("Question: demo")
        return ("yes" if n % 2 else "no") if shown else "yes"

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0) -> list[Generation]:
        out = []
        for p in prompts:
            ans = self._answer(TOK.decode(list(p)))
            text = f" I think it is {ans}. <ans>{ans}</ans> trailing"
            cut, s = min((text.index(s), s) for s in stop if s in text)
            out.append(Generation(text[:cut], s, 9))
        return out

    def loglik(self, prompt, continuations):
        text = TOK.decode(list(prompt))
        own = re.findall(r"I think it is (\w+)\. <ans>$", text)   # after its own reasoning: what it reasoned
        if own:
            self.prompts.append(text)
        ans = own[0] if own else self._answer(text)
        return [Continuation(-1.0 if TOK.decode(list(c)) == f"{ans}</ans>" else -9.0, len(c), True)
                for c in continuations]

    def reason_loglik(self, prompts, continuations, *, cue, max_new_tokens, stop=()):
        return reason_then_loglik(self, prompts, continuations, cue=cue, max_new_tokens=max_new_tokens, stop=stop)

    def loglik_batch(self, requests):
        return [self.loglik(p, c) for p, c in requests]

    def close(self) -> None:
        pass


def test_generate_mode_scores_exact_match_for_each_shot_count() -> None:
    s = LookupStudent()
    res = evaluate(s, ChatFormat(TOK, TASK.instruction), TASK, ITEMS, DEMOS, EvalConfig(mode="generate", shots=(0, 3)))
    assert res[0].outcomes == [0, 1, 0, 1, 0, 1] and res[0].accuracy == 0.5
    assert res[3].outcomes == [1] * 6 and res[3].answers[0] == "no"
    assert s.prompts[0].endswith(f"<|im_start|>assistant\n{OPENER}")
    assert s.prompts[-1].count("Question: demo") == 3
    assert res[3].summary()["n_correct"] == 6


def test_loglik_mode_picks_the_likeliest_option_and_needs_choices() -> None:
    s = LookupStudent()
    res = evaluate(s, ChatFormat(TOK, ""), TASK, ITEMS, DEMOS, EvalConfig(mode="loglik", shots=(0,)))
    assert res[0].outcomes == [0, 1, 0, 1, 0, 1]
    assert s.prompts[0].endswith("<|im_start|>assistant\n<ans>")
    exact = [Example("x", "item 1", ("yes",))]
    with pytest.raises(ScoringError, match="multiple-choice"):
        evaluate(s, ChatFormat(TOK, ""), TASK, exact, DEMOS, EvalConfig(mode="loglik", shots=(0,)))
    with pytest.raises(ConfigError, match="demonstrations"):
        evaluate(s, ChatFormat(TOK, ""), TASK, ITEMS, DEMOS[:1], EvalConfig(shots=(0, 3)))


def test_cot_choice_is_the_default_and_scores_options_after_the_reasoning() -> None:
    s = LookupStudent()
    assert EvalConfig().mode == "cot-choice"
    res = evaluate(s, ChatFormat(TOK, TASK.instruction), TASK, ITEMS, DEMOS, EvalConfig(shots=(0, 3)))
    assert res[0].outcomes == [0, 1, 0, 1, 0, 1] and res[3].outcomes == [1] * 6 and res[3].answers[0] == "no"
    assert s.prompts[0].endswith(f"<|im_start|>assistant\n{OPENER}")          # it reasons first
    assert len(s.prompts) == 2 * (6 + 6)          # per shot count: 6 reasonings, then 6 items' options
    assert s.prompts[6].endswith(f"<|im_start|>assistant\n{OPENER} I think it is yes. <ans>")


def test_cot_choice_matches_exact_match_items_exactly() -> None:
    s = LookupStudent()
    items = [Example("x1", "item 1", ("yes",)), Example("x2", "item 2", ("yes",))]
    res = evaluate(s, ChatFormat(TOK, ""), TASK, items, DEMOS, EvalConfig(shots=(3,), decide_on=3))
    assert res[3].outcomes == [1, 0] and res[3].answers == ["yes", "no"]


def test_mcnemar_p_values() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_p(8, 2) == pytest.approx(56 / 1024)
    assert mcnemar_p(9, 1) == pytest.approx(11 / 1024)
    assert mcnemar_p(0, 4) == 1.0


def test_a_clear_improvement_is_kept() -> None:
    old = [0] * 10 + [1] * 10
    new = [1] * 9 + [0] + [1] * 10
    d = keep_if_better(old, new)
    assert d.keep and (d.wins, d.losses) == (9, 0) and d.p_value < 0.01 and d.gain == pytest.approx(0.45)


@pytest.mark.parametrize("old, new, why", [
    ([1, 0] * 10, [1, 0] * 10, "no gain"),                       # identical
    ([0, 1, 1, 0] * 5, [1, 0, 1, 0] * 5, "no gain"),             # different items right, same accuracy
    ([0] * 8 + [1] * 12, [1] * 8 + [0] * 2 + [1] * 10, "noise"),  # +6 items: 8 won, 2 lost, p 0.055
    ([1] * 20, [1] * 15 + [0] * 5, "no gain"),                   # worse
])
def test_no_gain_or_a_gain_within_noise_is_rejected(old: list[int], new: list[int], why: str) -> None:
    d = keep_if_better(old, new)
    assert not d.keep and why in d.reason


def test_min_gain_and_paired_lengths() -> None:
    old, new = [0] * 10 + [1] * 30, [1] * 10 + [1] * 30   # +25 points, p ~ 0.001
    assert keep_if_better(old, new).keep
    assert not keep_if_better(old, new, min_gain=0.3).keep
    with pytest.raises(ConfigError, match="outcomes"):
        keep_if_better([1, 0], [1])


def test_pick_demos_is_deterministic_and_order_free() -> None:
    recs = [Draft(id=str(i), question="q", rationale="r", answer="a") for i in range(10)]
    assert pick_demos(recs, 3) == pick_demos(list(reversed(recs)), 3)
    assert len(pick_demos(recs, 3)) == 3


# A pool sorted by label, 4 of 5 items "yes": demonstrations by hash rank alone are all "yes" for most seeds.
POOL = [Example(f"x{i}", f"pool {i}", ("yes" if i < 16 else "no",), ("yes", "no")) for i in range(20)]


def test_demos_are_label_balanced() -> None:
    import hashlib

    from arte.tasks import label_counts

    by_hash = sorted(POOL, key=lambda e: hashlib.sha256(e.id.encode()).hexdigest())[:3]   # the old rule
    assert label_counts(by_hash) == {"yes": 3}
    for seed in range(4):
        demos = pick_demos(POOL, 3, seed=seed)
        assert sorted(label_counts(demos).values()) == [1, 2]
        assert label_counts(pick_demos(POOL, 4, seed=seed)) == {"no": 2, "yes": 2}
    assert pick_demos(POOL, 0) == [] and pick_demos(POOL[:2], 5) == pick_demos(POOL[:2], 2)


def test_split_demos_takes_them_out_of_the_holdout() -> None:
    from arte.evaluate import split_demos
    from arte.tasks import label_counts

    demos, items = split_demos(TASK, POOL, 3, seed=1)
    picked = pick_demos(POOL, 3, seed=1)
    assert [d.id for d in demos] == [f"gold-{e.id}" for e in picked]           # templated records
    assert all(d.rationale.endswith(f"<ans>{d.answer}</ans>") for d in demos)
    assert sorted(label_counts(demos).values()) == [1, 2]
    assert items == [e for e in POOL if e not in picked]                        # never evaluated, order kept
    assert split_demos(TASK, POOL, 0) == ([], POOL)
    with pytest.raises(ConfigError, match="shots"):
        split_demos(TASK, POOL[:3], 3)


def test_the_device_evaluation_never_shows_training_records(tmp_path) -> None:
    import json

    from arte.finetune_job import FinetuneConfig, eval_split
    from arte.tasks import load_task, split_task

    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps({"id": f"x{i}", "input": f"q{i}", "choices": ["yes", "no"],
                                        "answer": 0 if i < 30 else 1}) for i in range(40)))
    task = load_task(p)
    config = FinetuneConfig(eval=EvalConfig(shots=(0, 3)), split_seed=2, holdout_items=10)
    demos, items = eval_split(task, config)
    split = split_task(task, seed=2, n_seeds=0, validation=0.5)
    holdout = {e.id for e in split.holdout}
    assert len(demos) == 3 and {d.provenance["example"] for d in demos} <= holdout
    assert len({d.answer for d in demos}) == 2
    assert len(items) == 10 and not {d.provenance["example"] for d in demos} & {e.id for e in items}
    assert {e.id for e in items} <= holdout


@pytest.mark.parametrize("kw, field", [({"mode": "vote"}, "mode"), ({"shots": ()}, "shots"),
                                       ({"shots": (0,), "decide_on": 3}, "decide_on"), ({"alpha": 0}, "alpha")])
def test_eval_config_errors_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        EvalConfig(**kw)
    assert e.value.field == field
