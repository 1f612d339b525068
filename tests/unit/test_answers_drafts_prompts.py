import json
from pathlib import Path

import pytest

from arte.answers import is_correct, normalize_answer, parse_answer
from arte.drafts import Draft, read_drafts, write_drafts
from arte.errors import DraftFormatError
from arte.prompts import (
    RATIONALE_STYLES,
    option_continuation,
    question_prompt,
    rationale_prompt,
    scoring_item,
    scoring_prefix,
)
from arte.tasks import Example, Task


def test_parse_answer() -> None:
    assert parse_answer("so <ans> plausible </ans> done") == "plausible"
    assert parse_answer("<ANS>x</ANS>") == "x"
    assert parse_answer("first <ans>a</ans> then <ans>b</ans>") == "a"
    assert parse_answer("<ans>unterminated") is None
    assert parse_answer("<ans>  </ans>") is None
    assert parse_answer("no tag") is None


@pytest.mark.parametrize("a, targets, ok", [
    ("Plausible.", ["plausible"], True),
    (" 'three' ", ["three", "3"], True),
    ("3", ["three", "3"], True),
    ("4", ["three", "3"], False),
    ("implausible", ["plausible"], False),
    ("(A)", ["a"], True),
    (None, ["a"], False),
    ("", [""], False),
])
def test_is_correct(a, targets, ok) -> None:
    assert is_correct(a, targets) is ok


def test_normalize_collapses_whitespace_and_case() -> None:
    assert normalize_answer("  Apple   BANANA\ncherry. ") == "apple banana cherry"


def test_drafts_roundtrip_and_errors(tmp_path: Path) -> None:
    d = [Draft("d1", "Q?", "because <ans>a</ans>", "a", provenance={"teacher": "t"}),
         Draft("d2", "Q2?", "", "b", question_id="q", style="plain")]
    p = tmp_path / "d.jsonl"
    assert write_drafts(p, d) == 2
    back = read_drafts(p)
    assert back[0].question_id == "d1" and back[0].provenance == {"teacher": "t"}
    assert back[1] == d[1]
    p.write_text(json.dumps(d[0].to_dict()) + "\n" + json.dumps({"id": "x", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DraftFormatError) as ei:
        read_drafts(p)
    assert ei.value.index == 2 and ei.value.field == "rationale" and "line 2" in str(ei.value)
    p.write_text(json.dumps(d[0].to_dict()) + "\n" + json.dumps(d[0].to_dict()) + "\n")
    with pytest.raises(DraftFormatError, match="duplicate id"):
        read_drafts(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(DraftFormatError, match="expected an object"):
        read_drafts(p)


def test_scoring_template_matches_the_paper() -> None:
    task = Task("t", "Decide if it is plausible", (), task_prefix="")
    draft = Draft("d", "Is X Y?", "X is Y. <ans>yes</ans>", "yes")
    ex = Example("e", "Is Z W?", ("no",), ("yes", "no"))
    prefix = scoring_prefix(task, draft)
    assert prefix == ("Decide if it is plausible. Include your final answer with the tag <ans> and </ans>.\n\n"
                      "Question: Is X Y?\nAnswer: Let's think step by step. X is Y. <ans>yes</ans>\n\n")
    assert scoring_item(task, ex, "generate") == "Question: Is Z W?\nOptions: yes, no\nAnswer: Let's think step by step."
    assert scoring_item(task, ex, "loglik").endswith("Answer: <ans>")
    assert option_continuation("no") == "no</ans>"
    # A rationale without the tag gets the draft's answer appended.
    assert scoring_prefix(task, Draft("d", "q", "because", "yes")).endswith("because <ans>yes</ans>\n\n")


def test_teacher_prompts() -> None:
    task = Task("t", "Count things", ())
    seeds = [Example(str(i), f"question {i}", ("1",)) for i in range(3)]
    msgs = question_prompt(task, seeds, n=5)
    assert msgs[-1]["role"] == "user" and "Question 3: question 2" in msgs[-1]["content"]
    assert "'Question 5:'" in msgs[-1]["content"]
    assert len(RATIONALE_STYLES) == 4
    for style in RATIONALE_STYLES:
        m = rationale_prompt(task, "how many?", style)
        assert m[0]["role"] == "system" and "<ans>answer</ans>" in m[1]["content"]
    with pytest.raises(KeyError):
        rationale_prompt(task, "q", "nope")
