from pathlib import Path

import numpy as np
import pytest

from arte.drafts import Draft
from arte.errors import ConfigError, ScoringError
from arte.scoring import DEFAULT_MODE, MODES, ScoringConfig, score_drafts
from arte.tasks import Example, Task, load_task, split_task
from tests.support.fakes import CopyingStudent, RationaleStudent

TASK = Task("toy", "Say yes or no", ())
ITEMS = [Example(f"i{k}", f"item {k}?", ("yes" if k % 3 else "no",), ("yes", "no")) for k in range(12)]
DRAFTS = [Draft("d-yes", "q?", "r <ans>yes</ans>", "yes"), Draft("d-no", "q?", "r <ans>no</ans>", "no"),
          Draft("d-maybe", "q?", "r <ans>maybe</ans>", "maybe")]


@pytest.mark.parametrize("mode", MODES)
def test_counts_equal_what_the_copying_student_must_get(mode: str) -> None:
    res = score_drafts(CopyingStudent(), TASK, DRAFTS, ITEMS, ScoringConfig(mode=mode))
    n_yes = sum(e.answer == "yes" for e in ITEMS)
    got = {s.draft_id: (s.n_items, s.n_correct) for s in res.scores}
    if mode != "generate":  # "maybe" is not an option: every option scores the same, the first ("yes") wins
        assert got == {"d-yes": (12, n_yes), "d-no": (12, 12 - n_yes), "d-maybe": (12, n_yes)}
    else:                 # generating "maybe" matches nothing
        assert got == {"d-yes": (12, n_yes), "d-no": (12, 12 - n_yes), "d-maybe": (12, 0)}
    assert res.outcomes.shape == (3, 12) and res.complete
    assert res.outcomes[0].tolist() == [int(e.answer == "yes") for e in ITEMS]


def test_loglik_normalizes_by_bytes() -> None:
    class LongOptionStudent(CopyingStudent):
        """Every token costs the same, so summed log-probs always prefer the shortest option."""
        def loglik(self, prompt, continuations):
            from arte.student import Continuation
            return [Continuation(-1.0 * len(c), len(c), False) for c in continuations]

    items = [Example("x", "q", ("longer option",), ("ab", "longer option"))]
    d = [Draft("d", "q", "r", "a")]
    per_byte = score_drafts(LongOptionStudent(), TASK, d, items, ScoringConfig(length_norm="bytes"))
    summed = score_drafts(LongOptionStudent(), TASK, d, items, ScoringConfig(length_norm="none"))
    assert summed.scores[0].n_correct == 0       # shortest wins on the sum
    assert per_byte.scores[0].n_correct == 0     # a tie per byte goes to the first option
    items2 = [Example("x", "q", ("ab",), ("longer option", "ab"))]
    assert score_drafts(LongOptionStudent(), TASK, d, items2, ScoringConfig(length_norm="none")).scores[0].n_correct == 1


def test_reasoning_is_the_default_mode() -> None:
    assert ScoringConfig().mode == DEFAULT_MODE == "cot-choice"


# Two sports drafts with the same answer label and different rationales, and the same rationale with
# different labels. The student below follows the rationale ("check the sport") when it reasons.
SPORT_ITEMS = [Example(f"s{k}", f"Player {k} did action {k}.", ("yes" if k % 3 else "no",), ("yes", "no"))
               for k in range(12)]
TRUTH = {e.input: e.answer for e in SPORT_ITEMS}
RULE = "I check the sport of the player and of the action."
SPORT_DRAFTS = [Draft("rule-yes", "q?", f"{RULE} <ans>yes</ans>", "yes"),
                Draft("vague-yes", "q?", "It sounds fine. <ans>yes</ans>", "yes"),
                Draft("rule-no", "q?", f"{RULE} <ans>no</ans>", "no")]


@pytest.mark.parametrize("mode", MODES)
def test_the_reasoning_modes_score_the_rationale_and_loglik_only_the_label(mode: str) -> None:
    res = score_drafts(RationaleStudent(TRUTH), TASK, SPORT_DRAFTS, SPORT_ITEMS, ScoringConfig(mode=mode))
    got = {s.draft_id: s.n_correct for s in res.scores}
    n_yes = sum(e.answer == "yes" for e in SPORT_ITEMS)
    if mode == "loglik":   # answer-first: the label decides, whatever the rationale says
        assert got == {"rule-yes": n_yes, "vague-yes": n_yes, "rule-no": 12 - n_yes}
    else:                  # reasoning: the rationale decides, whatever the label
        assert got == {"rule-yes": 12, "vague-yes": n_yes, "rule-no": 12}


def test_one_call_per_draft() -> None:
    st = CopyingStudent()
    score_drafts(st, TASK, DRAFTS, ITEMS, ScoringConfig(mode="generate"))
    assert st.generate_calls == len(DRAFTS)
    st = CopyingStudent()
    score_drafts(st, TASK, DRAFTS, ITEMS, ScoringConfig(mode="cot-choice"))
    assert st.reason_calls == len(DRAFTS) and st.generate_calls == len(DRAFTS)   # the fake reasons by generating


def test_should_stop_leaves_out_unscored_drafts() -> None:
    calls = iter([False, True])
    res = score_drafts(CopyingStudent(), TASK, DRAFTS, ITEMS, should_stop=lambda: next(calls))
    assert [s.draft_id for s in res.scores] == ["d-yes"] and not res.complete and res.outcomes.shape == (1, 12)


def test_progress_counts_items() -> None:
    seen = []
    score_drafts(CopyingStudent(), TASK, DRAFTS, ITEMS, progress=seen.append)
    assert seen == [12, 12, 12]


def test_loglik_refuses_exact_match_items() -> None:
    items = ITEMS + [Example("free", "q", ("42",))]
    with pytest.raises(ScoringError, match="'free'"):
        score_drafts(CopyingStudent(), TASK, DRAFTS, items, ScoringConfig(mode="loglik"))
    with pytest.raises(ScoringError, match="no validation items"):
        score_drafts(CopyingStudent(), TASK, DRAFTS, [])


def test_cot_choice_matches_exact_match_items_like_generate() -> None:
    items = ITEMS[:4] + [Example("free-yes", "q", ("yes",)), Example("free-42", "q", ("42",))]
    a = score_drafts(CopyingStudent(), TASK, DRAFTS, items, ScoringConfig(mode="cot-choice"))
    b = score_drafts(CopyingStudent(), TASK, DRAFTS, items, ScoringConfig(mode="generate"))
    assert a.outcomes[:, 4:].tolist() == b.outcomes[:, 4:].tolist() == [[1, 0], [0, 0], [0, 0]]
    assert a.outcomes[2, :4].tolist() == [int(e.answer == "yes") for e in items[:4]]   # "maybe": first option


@pytest.mark.parametrize("mode", ["generate", "cot-choice"])
def test_reasoning_modes_on_exact_match_bigbench_task(bigbench_dir: Path, mode: str) -> None:
    task = load_task(bigbench_dir / "object_counting.json")
    items = list(split_task(task, n_seeds=0).validation[:30])
    d = [Draft("three", "q", "r <ans>3</ans>", "3")]
    res = score_drafts(CopyingStudent(), task, d, items, ScoringConfig(mode=mode))
    assert res.scores[0].n_correct == sum("3" in e.targets for e in items) > 0


@pytest.mark.parametrize("kw, field", [({"mode": "x"}, "mode"), ({"length_norm": "chars"}, "length_norm"),
                                        ({"max_new_tokens": 0}, "max_new_tokens")])
def test_config_validation(kw, field) -> None:
    with pytest.raises(ConfigError) as ei:
        ScoringConfig(**kw)
    assert ei.value.field == field


def test_accuracy_property() -> None:
    res = score_drafts(CopyingStudent(), TASK, DRAFTS[:1], ITEMS)
    assert res.scores[0].accuracy == pytest.approx(np.mean([e.answer == "yes" for e in ITEMS]))
