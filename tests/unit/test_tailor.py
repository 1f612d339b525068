"""Tailored data with a scripted teacher: filter reasons, consistency check, files and manifest."""

from __future__ import annotations

import hashlib
import json

import pytest

from arte.drafts import read_drafts
from arte.errors import ConfigError
from arte.prompts import RATIONALE_STYLES, question_block
from arte.sft_data import assistant_message, user_message
from arte.tailor import TailorConfig, tailor_dataset
from arte.tasks import Example, Task
from tests.support.teacher_fakes import ScriptedTeacher, asked_question, is_question_prompt

OPTS = ("plausible", "implausible")
TASK = Task("sports", "Judge plausibility.", tuple(Example(f"s{i}", f"Player {i} scored", ("plausible",), OPTS)
                                                   for i in range(3)), input_prefix="Statement:")

QUESTIONS = [f"Statement: {name}\nOptions: plausible, implausible" for name in
             ["Messi scored a goal", "Brady threw a pass", "Curry hit a three", "Ohtani pitched a gem",
              "Lebron dunked twice", "Ronaldo threw a pass", "Kane kicked a field goal"]]

# Greedy (T=0) replies per question and sampled (T>0) replies for the consistency check.
GREEDY = {
    "Messi scored a goal": "Soccer players score goals, so this fits. <ans>plausible</ans>",
    "Brady threw a pass": "A quarterback throws passes; it fits. <ans>Plausible.</ans>",
    "Curry hit a three": "He plays basketball and hits threes. <ans>maybe</ans>",       # not an option
    "Ohtani pitched a gem": "He is a pitcher, so yes it fits.",                        # extracted answer
    "Lebron dunked twice": "Yes <ans>plausible</ans>",                                  # too short
    "Ronaldo threw a pass": "Soccer players can pass the ball. <ans>plausible</ans>",
    "Kane kicked a field goal": "Hmm, hard to say really.",                            # no answer at all
}
EXTRACTED = {"Ohtani pitched a gem": "plausible"}
SAMPLED = {"Messi scored a goal": "Goals are soccer. <ans>plausible</ans>",
           "Brady threw a pass": "Passing is football. <ans>plausible</ans>",
           "Ohtani pitched a gem": "Pitchers pitch. <ans>plausible</ans>",
           "Ronaldo threw a pass": "Throwing is not soccer. <ans>implausible</ans>"}     # disagrees


def teacher(adapter: str | None = "cohort-a") -> ScriptedTeacher:
    def reply(messages, kw, i):
        if is_question_prompt(messages):
            return "Here are the questions:\n" + question_block(QUESTIONS + [QUESTIONS[0]])
        assert messages[0]["content"] == RATIONALE_STYLES["plain"]
        name = asked_question(messages[:2]).splitlines()[0].removeprefix("Statement: ")
        if messages[-1]["role"] == "assistant":      # answer extraction
            return EXTRACTED.get(name, "")
        return (GREEDY if kw["temperature"] == 0 else SAMPLED)[name]

    return ScriptedTeacher(reply, name="teacher-base", adapter=adapter)


def test_tailor_filters_writes_jsonl_and_manifest(tmp_path) -> None:
    t = teacher()
    cfg = TailorConfig(n_questions=7, check_samples=1, check_temperature=0.7, min_rationale_chars=30)
    events = []
    res = tailor_dataset(t, TASK, TASK.examples, cfg, tmp_path / "out", progress=lambda *a: events.append(a))
    assert [e.question for e in res.examples] == [QUESTIONS[0], QUESTIONS[1], QUESTIONS[3]]
    assert [e.answer for e in res.examples] == ["plausible", "plausible", "plausible"]
    assert res.examples[2].rationale == "He is a pitcher, so yes it fits.\nTherefore, the answer is <ans>plausible</ans>"
    assert res.examples[2].provenance["answer_extracted"] and not res.examples[0].provenance["answer_extracted"]
    m = res.manifest
    # 7 questions need ceil(7/5) = 2 prompts; both replies list the same 8 blocks: 9 duplicates.
    # The scripted teacher ignores formats (like an endpoint without structured output): nothing counted.
    assert m["counts"] == {"questions": 7, "kept": 3, "question_prompts": 2, "question_prompts_with_questions": 1,
                           "rejected/question/duplicate": 9,
                           "rejected/example/answer_not_an_option": 1, "rejected/example/no_answer": 1,
                           "rejected/example/rationale_too_short": 1, "rejected/example/inconsistent": 1,
                           "repaired/answer_extracted": 1}
    data = res.dataset_path.read_bytes()
    assert m["sha256"] == hashlib.sha256(data).hexdigest() and m["size"] == len(data) and m["n_examples"] == 3
    assert m["file"] == "dataset.jsonl" and m["format"] == "arte-tailored/1" and m["task"] == "sports"
    assert m["teacher"] == "teacher-base" and m["adapter"] == "cohort-a"
    assert json.loads(res.manifest_path.read_text()) == m
    assert read_drafts(res.dataset_path) == res.examples        # the device's SFT reads it this way
    # the same examples as `messages` conversations: the turns the student's SFT trains on
    chats = [json.loads(x) for x in (tmp_path / "out" / m["messages_file"]).read_text().splitlines()]
    assert len(chats) == 3 and [c["messages"][1]["content"] for c in chats] == [
        assistant_message(e) for e in res.examples]
    assert chats[0]["messages"][0] == {"role": "user", "content": user_message(TASK.instruction, QUESTIONS[0])}
    e = res.examples[0]
    assert e.id == "q0000" and e.style == "plain" and e.rationale.endswith("<ans>plausible</ans>")
    assert e.provenance["consistency"] == {"samples": 1, "agreed": 1, "temperature": 0.7}
    assert e.provenance["rationale_sampling"]["temperature"] == 0.0 and e.provenance["adapter"] == "cohort-a"
    temps = sorted({c["temperature"] for c in t.calls})
    assert temps == [0.0, 0.7, 1.0]
    assert {ev[0] for ev in events} == {"questions", "rationales", "checks"}
    assert list((tmp_path / "out").iterdir()) and not list((tmp_path / "out").glob("*.tmp"))


def test_without_consistency_check_more_examples_survive(tmp_path) -> None:
    res = tailor_dataset(teacher(adapter=None), TASK, TASK.examples, TailorConfig(n_questions=7, check_samples=0,
                                                                                min_rationale_chars=30),
                         tmp_path)
    assert [e.question for e in res.examples] == [QUESTIONS[0], QUESTIONS[1], QUESTIONS[3], QUESTIONS[5]]
    assert "rejected/example/inconsistent" not in res.manifest["counts"] and res.manifest["adapter"] is None


def test_empty_result_still_writes_an_honest_manifest(tmp_path) -> None:
    t = ScriptedTeacher(lambda m, kw, i: "nothing useful")
    res = tailor_dataset(t, TASK, TASK.examples, TailorConfig(n_questions=2, max_question_prompts=2), tmp_path)
    assert res.examples == [] and res.manifest["n_examples"] == 0 and res.dataset_path.read_bytes() == b""
    assert res.manifest["counts"]["rejected/question/no_question_marker"] == 2


@pytest.mark.parametrize("kw, field", [({"check_samples": -1}, "check_samples"),
                                       ({"check_temperature": 0.0}, "check_temperature"),
                                       ({"min_rationale_chars": 10_000}, "min_rationale_chars"),
                                       ({"n_seeds": 0}, "n_seeds")])
def test_config_errors_name_the_field(kw, field) -> None:
    with pytest.raises(ConfigError) as e:
        TailorConfig(**kw)
    assert e.value.field == field
