"""Elicitation with a scripted teacher: parsing, rejection counts, option rule, ids, provenance, files."""

from __future__ import annotations

import re
import zlib

import pytest

from arte.drafts import read_drafts, write_drafts
from arte.elicit import ElicitConfig, check_rationale, elicit_drafts, extracted_answer, trim_rationale
from arte.errors import ConfigError
from arte.prompts import question_block
from arte.questions import (
    QuestionConfig,
    QuestionFilter,
    draw_seeds,
    normalize_question,
    parse_options,
    shared_options,
    split_questions,
)
from arte.tasks import Example, Task, format_question
from tests.support.teacher_fakes import (
    FakeLMTeacher,
    ScriptedTeacher,
    asked_question,
    is_question_prompt,
    scripted_preference,
)

OPTS = ("plausible", "implausible")
SPORTS = Task("sports", "Judge whether the sentence is plausible.", tuple(
    Example(f"s{i}", f"Player {i} scored a goal", ("plausible",), OPTS) for i in range(5)), input_prefix="Statement:")
SEEDS = SPORTS.examples[:3]
COUNT = Task("count", "Count.", (Example("c0", "How many legs has a cat?", ("4", "four")),
                                 Example("c1", "How many wings has a bird?", ("2",))))


def seed_q(i: int) -> str:
    return format_question(SPORTS, SPORTS.examples[i])


def test_split_questions_accepts_marker_variants_and_skips_preamble() -> None:
    text = ("Sure, here you go!\n**Question 1:** alpha\n### Question 2. beta\nQ3) gamma\nq: delta\n"
            "Question 5 : epsilon")
    blocks, marked = split_questions(text)
    assert marked and [b.strip() for b in blocks] == ["alpha", "beta", "gamma", "delta", "epsilon"]
    blocks, marked = split_questions("1. one\n2) two")
    assert marked and [b.strip() for b in blocks] == ["one", "two"]
    assert split_questions("I cannot write questions.") == ([], False)


def test_question_block_round_trips_through_the_parser() -> None:
    qs = [seed_q(0), "Statement: X\nOptions: plausible, implausible", "Multi\nline"]
    blocks, _ = split_questions(question_block(qs))
    assert [b.strip() for b in blocks] == qs


def test_normalization_and_options() -> None:
    assert normalize_question("  Is  IT, plausible?") == normalize_question("is it plausible")
    assert parse_options("Statement: x\nOptions: a, b, c") == ("a", "b", "c")
    assert parse_options("no options here") is None
    assert shared_options(SEEDS) == OPTS
    mixed = (SEEDS[0], Example("z", "q", ("x",), ("x", "y")))
    assert shared_options(mixed) is None and shared_options(COUNT.examples) is None


def test_filter_reasons_and_repairs_multiple_choice() -> None:
    f = QuestionFilter(SPORTS, SEEDS, QuestionConfig(min_question_chars=10, max_question_chars=80))
    ok = f.check("Statement: Messi hit a home run\nOptions: plausible, implausible")
    assert ok == "Statement: Messi hit a home run\nOptions: plausible, implausible"
    added = f.check("Statement: Brady threw a pass\nAnswer: plausible")
    assert added == "Statement: Brady threw a pass\nOptions: plausible, implausible"
    assert f.check("Statement: Ronaldo scored a try\nOptions: plausible, implausible\n\nHope it helps!") \
        == "Statement: Ronaldo scored a try\nOptions: plausible, implausible"
    assert f.check("   ") is None
    assert f.check("[\nOptions: plausible, implausible") is None    # the options do not make it long enough
    assert f.check("Statement: x\nOptions: yes, no") is None        # options differ from the task's
    assert f.check("Statement: x\nOptions: plausible") is None      # fewer than two options
    assert f.check(seed_q(1).upper()) is None                       # a seed, in other case
    assert f.check("statement: messi hit a HOME run!\nOptions: plausible, implausible") is None
    assert f.check("Statement: " + "very " * 30 + "long\nOptions: plausible, implausible") is None
    assert f.rejections == {"empty": 1, "options_differ_from_task": 1, "bad_options": 1, "duplicate_of_seed": 1,
                            "duplicate": 1, "too_long": 1, "too_short": 1}
    assert f.repairs == {"answer_removed": 1, "options_added": 1, "trailing_text_removed": 1}


def test_filter_length_bounds_exact_match() -> None:
    f = QuestionFilter(COUNT, COUNT.examples, QuestionConfig(min_question_chars=10))
    assert f.check("Why?") is None
    assert f.check("How many legs has a spider?") == "How many legs has a spider?"
    assert f.check("How many legs has a spider?\n\nThese are fun questions.") is None   # cut, then a duplicate
    assert f.rejections == {"too_short": 1, "duplicate": 1}
    assert f.repairs == {"trailing_text_removed": 1}


def test_filter_without_fixed_options_rejects_missing_options() -> None:
    seeds = (Example("a", "Pick a colour", ("red",), ("red", "blue")), Example("b", "Pick a fruit", ("fig",), ("fig", "kiwi")))
    f = QuestionFilter(Task("t", "", seeds), seeds, QuestionConfig(min_question_chars=1))
    assert f.check("Pick a number") is None
    assert f.check("Pick a number\nOptions: one, two") == "Pick a number\nOptions: one, two"
    assert f.rejections == {"no_options": 1}


def test_trim_and_check_rationale() -> None:
    q = "Statement: x\nOptions: plausible, implausible"
    assert trim_rationale("Reason. <ans>a</ans> and then rambling <ans>b</ans>") == "Reason. <ans>a</ans>"
    r, a, why = check_rationale(q, "Because. <ANS> Plausible. </ans> more", multiple_choice=True)
    assert (r, a, why) == ("Because. <ANS> Plausible. </ans>", "plausible", None)
    assert check_rationale(q, "  ", multiple_choice=True)[2] == "empty"
    assert check_rationale(q, "It is plausible.", multiple_choice=True)[2] == "no_answer"
    assert check_rationale(q, "<ans>plausible", multiple_choice=True)[2] == "no_answer"   # cut before </ans>
    assert check_rationale(q, "<ans>maybe</ans>", multiple_choice=True)[2] == "answer_not_an_option"
    assert check_rationale(q, "<ans>plaus</ans>", multiple_choice=True)[2] == "answer_not_an_option"
    assert check_rationale(q, "<ans>" + "x" * 300 + "</ans>", multiple_choice=True)[2] == "answer_too_long"
    assert check_rationale("How many?", "<ans>four</ans>", multiple_choice=False)[1] == "four"


def sports_teacher(rationales: dict[str, str]) -> ScriptedTeacher:
    """Question prompts get a fixed script of replies (cycling); rationale prompts answer per style."""
    replies = [
        # prompt 0: two good, one duplicate of a seed, one missing options (repaired)
        question_block(["Statement: Messi hit a home run\nOptions: plausible, implausible",
                        "Statement: Brady threw a touchdown\nOptions: plausible, implausible",
                        seed_q(0), "Statement: Curry made a three pointer"]),
        "",                                                 # prompt 1: empty reply
        "I am sorry, I cannot help with that.",             # prompt 2: no marker
        # prompt 3: a duplicate and one more new question
        question_block(["Statement: MESSI hit a home run!\nOptions: plausible, implausible",
                        "Statement: Ohtani hit a slam dunk\nOptions: yes, no",
                        "Statement: Ohtani hit a homer\nOptions: implausible, plausible"]),
    ]

    def reply(messages, kw, i):
        if messages[-1]["role"] == "assistant":   # answer extraction: this teacher has nothing to add
            return ""
        if is_question_prompt(messages):
            prompt_index = kw["seed"] + i      # config.seed (0) + prompt index
            return replies[prompt_index % len(replies)]
        return rationales[_style_of(messages)].format(q=asked_question(messages))

    return ScriptedTeacher(reply)


def _style_of(messages) -> str:
    from arte.prompts import RATIONALE_STYLES

    return next(k for k, v in RATIONALE_STYLES.items() if v == messages[0]["content"])


def test_elicit_counts_every_rejection_and_builds_drafts() -> None:
    rationales = {"plain": "It fits the sport. <ans>Plausible</ans> trailing", "expert": "No tag here",
                  "rules": "Hmm <ans>maybe</ans>", "eliminate": "Eliminate. <ans>implausible</ans>"}
    teacher = sports_teacher(rationales)
    progress = []
    cfg = ElicitConfig(n_questions=4, batch_size=2, max_question_prompts=4, seed=0)
    res = elicit_drafts(teacher, SPORTS, SEEDS, cfg, progress=lambda *a: progress.append(a))
    assert [q.text.splitlines()[0] for q in res.questions] == [
        "Statement: Messi hit a home run", "Statement: Brady threw a touchdown", "Statement: Curry made a three pointer",
        "Statement: Ohtani hit a homer"]
    assert res.question_rejections == {"duplicate_of_seed": 1, "empty_reply": 1, "no_question_marker": 1,
                                       "duplicate": 1, "options_differ_from_task": 1}
    assert res.repairs == {"options_added": 1}
    assert res.draft_rejections == {"no_answer": 4, "answer_not_an_option": 4}
    assert len(res.drafts) == 8                     # plain + eliminate for each of 4 questions
    d = res.drafts[0]
    assert d.id == "q0000-plain" and d.question_id == "q0000" and d.style == "plain" and d.task == "sports"
    assert d.answer == "plausible"                  # the option as the question spells it
    assert d.rationale == "It fits the sport. <ans>Plausible</ans>"
    p = d.provenance
    assert p["teacher"] == "scripted" and p["adapter"] is None and p["question_prompt"] == "qp0000"
    assert sorted(p["seed_examples"]) == ["s0", "s1", "s2"] and p["rationale_prompt"] == "plain"
    assert p["question_sampling"]["temperature"] == 1.0 and p["rationale_sampling"]["temperature"] == 0.0
    assert res.stats["question_prompts"] == 4 and res.stats["question_shortfall"] == 0
    assert ("questions", 4, 4) in progress and ("rationales", 16, 16) in progress
    q_calls = [c for c in teacher.calls if is_question_prompt(c["conversations"][0])]
    assert [c["temperature"] for c in q_calls] == [1.0] * 4 and [c["seed"] for c in q_calls] == [0, 1, 2, 3]


def test_answer_extraction_recovers_untagged_replies() -> None:
    extraction_calls = []

    def reply(messages, kw, i):
        if is_question_prompt(messages):
            return question_block([f"Statement: athlete {k} made a play\nOptions: plausible, implausible"
                                   for k in range(4)])
        if messages[-1]["role"] == "assistant":
            extraction_calls.append((messages[-1]["content"], kw))
            q = messages[1]["content"]
            return {"0": " Plausible", "1": "", "2": "maybe", "3": "<ans>x"}[q.split("athlete ")[1][0]]
        return "It fits the sport, so it is plausible."

    t = ScriptedTeacher(reply)
    res = elicit_drafts(t, SPORTS, SEEDS, ElicitConfig(n_questions=4, styles=("plain",), answer_max_new_tokens=9))
    assert [d.question_id for d in res.drafts] == ["q0000"]
    d = res.drafts[0]
    assert d.rationale == "It fits the sport, so it is plausible.\nTherefore, the answer is <ans>plausible</ans>"
    assert d.answer == "plausible" and d.provenance["answer_extracted"] is True
    assert res.repairs == {"answer_extracted": 1}             # q1 said nothing, q2 no option, q3 junk
    assert res.draft_rejections == {"no_answer": 3}
    assert len(extraction_calls) == 4
    content, kw = extraction_calls[0]
    assert content == "It fits the sport, so it is plausible.\nTherefore, the answer is"
    assert kw["temperature"] == 0.0 and kw["stop"] == ("\n",) and kw["max_new_tokens"] == 9
    off = elicit_drafts(ScriptedTeacher(reply), SPORTS, SEEDS,
                        ElicitConfig(n_questions=4, styles=("plain",), extract_answers=False))
    assert off.drafts == [] and off.draft_rejections == {"no_answer": 4} and "answer_extracted" not in off.repairs


@pytest.mark.parametrize("text, options, expected", [
    (" plausible.", OPTS, "plausible"), (" Implausible, not plausible", OPTS, "implausible"),
    (": it is PLAUSIBLE", OPTS, "plausible"), (" 1.", OPTS, None), (" implausibly", OPTS, None),
    (" <ans>plausible</ans>", OPTS, "plausible"), (": 42. Because four legs", None, "42"),
    (" three", None, "three"), ("  ", None, None), (" .", None, None),
])
def test_extracted_answer(text, options, expected) -> None:
    assert extracted_answer(text, options) == expected


def test_elicit_stops_at_the_prompt_limit_and_reports_the_shortfall() -> None:
    teacher = ScriptedTeacher(lambda m, kw, i: "no questions today" if is_question_prompt(m) else "<ans>x</ans>")
    res = elicit_drafts(teacher, SPORTS, SEEDS, ElicitConfig(n_questions=10, max_question_prompts=3, batch_size=8))
    assert res.drafts == [] and res.questions == []
    assert res.question_rejections == {"no_question_marker": 3}
    assert res.stats["question_shortfall"] == 10 and res.stats["question_prompts"] == 3


def test_exact_match_task_and_seed_draws(tmp_path) -> None:
    seeds = tuple(Example(f"c{i}", f"How many legs have {i} cats?", (str(4 * i),)) for i in range(6))
    task = Task("count", "Count.", seeds)
    counter = iter(range(10_000))

    def reply(messages, kw, i):
        if is_question_prompt(messages):
            n = next(counter)
            return question_block([f"How many ears have {n} dogs?", f"How many eyes have {n} owls?"])
        return "Two each. <ans>" + asked_question(messages).split()[4] + "</ans>"

    t = ScriptedTeacher(reply)
    cfg = ElicitConfig(n_questions=5, questions_per_prompt=2, styles=("plain", "rules"), n_seeds=3, seed=7)
    res = elicit_drafts(t, task, seeds, cfg)
    assert len(res.questions) == 5 and len(res.drafts) == 10
    drawn = [q.provenance["seed_examples"] for q in res.questions]
    assert all(len(d) == 3 and len(set(d)) == 3 for d in drawn)
    assert len({tuple(d) for d in drawn}) > 1        # different prompts show different seeds
    assert res.drafts[0].answer == "0"
    path = tmp_path / "drafts.jsonl"
    write_drafts(path, res.drafts)
    back = read_drafts(path)
    assert back == res.drafts
    again = elicit_drafts(ScriptedTeacher(reply), task, seeds, cfg)
    assert [q.provenance["seed_examples"] for q in again.questions] == drawn   # deterministic by seed


@pytest.mark.parametrize("kw, field", [({"styles": ("plain", "poetic")}, "styles"), ({"styles": ()}, "styles"),
                                       ({"styles": ("plain", "plain")}, "styles"), ({"n_questions": 0}, "n_questions"),
                                       ({"question_temperature": -1.0}, "question_temperature"),
                                       ({"max_question_chars": 5, "min_question_chars": 10}, "max_question_chars"),
                                       ({"rationale_max_new_tokens": 0}, "rationale_max_new_tokens")])
def test_config_errors_name_the_field(kw, field) -> None:
    with pytest.raises(ConfigError) as e:
        ElicitConfig(**kw)
    assert e.value.field == field


def test_config_from_json_lists() -> None:
    assert ElicitConfig(styles=["plain", "rules"]).styles == ("plain", "rules")


def test_no_seeds_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="seeds"):
        elicit_drafts(ScriptedTeacher(lambda m, kw, i: ""), SPORTS, (), ElicitConfig(n_questions=1))


# ---- constrained decoding with a fake model that breaks the format -----------------------------------

LETTERS = ("(a)", "(b)", "(c)", "(d)")
ABCD = Task("abcd", "Pick the fruit.", tuple(
    Example(f"a{i}", f"Which is a fruit? (a) apple (b) car (c) rock (d) pen #{i}", (LETTERS[i % 4],), LETTERS)
    for i in range(4)))
DATES = Task("dates", "Infer the date.", tuple(
    Example(f"d{i}", f"Yesterday was 0{i + 1}/1{i}/2020. What is today in MM/DD/YYYY?", (f"0{i + 1}/1{i + 1}/2020",),
            tuple(f"0{i + 1}/1{i + k}/2020" for k in range(1, 7))) for i in range(3)))


def format_breaking_teacher() -> FakeLMTeacher:
    """A fake model whose own choices never parse: questions as a bulleted list with the answer in an
    ``<ans>`` tag and no options line, rationales without a tag that stop early or ramble with '<' and
    line breaks."""

    def prefer(messages, text):
        if is_question_prompt(messages):
            script = "Sure!\n- Is it true? <ans>yes</ans>\n- Another one, no options\n"
            tag = zlib.crc32(messages[-1]["content"].encode()) % 1000      # prompts differ by their seeds
            return scripted_preference(script, f"Did player {tag} score a goal, <b>yes</b>?\n\n")(text)
        if "Pick" in messages[-1]["content"] or "plausible" in messages[-1]["content"]:
            return scripted_preference("It is obvious, I think.", "x")(text)        # stops early, no tag
        return scripted_preference("", "so 3 < 4,\nthen ")(text)                 # rambles to the budget

    return FakeLMTeacher(prefer)


@pytest.mark.parametrize("task", [SPORTS, ABCD, DATES], ids=["two-options", "letters-in-input", "six-dates"])
def test_constrained_teacher_always_gives_questions_with_options_and_valid_answers(task) -> None:
    t = format_breaking_teacher()
    free = elicit_drafts(t, task, task.examples, ElicitConfig(n_questions=4, questions_per_prompt=2, batch_size=4,
                                                             max_question_prompts=4, constrain=False,
                                                             extract_answers=False, question_max_new_tokens=96,
                                                             rationale_max_new_tokens=48))
    assert free.drafts == []                                       # unconstrained, nothing parses
    cfg = ElicitConfig(n_questions=4, questions_per_prompt=2, batch_size=4, max_question_prompts=4,
                       question_max_new_tokens=160, rationale_max_new_tokens=48, extract_answers=False)
    res = elicit_drafts(t, task, task.examples, cfg)
    assert len(res.questions) == 4 and res.question_rejections.get("no_options", 0) == 0
    want = shared_options(task.examples)
    for q in res.questions:
        opts = parse_options(q.text)
        assert opts is not None and "<" not in q.text
        if want is not None:
            assert opts == want                                       # exactly the task's options
        else:
            assert 5 <= len(opts) <= 6 and all(re.fullmatch(r"\d\d/\d\d/\d{4}", o) for o in opts)
    assert len(res.drafts) == 4 * len(cfg.styles) and res.draft_rejections == {}
    for d in res.drafts:
        assert d.rationale.endswith(f"<ans>{d.answer}</ans>") and d.answer in parse_options(d.question)
        assert not d.provenance["answer_extracted"]
    c = res.stats["constraint"]
    assert c["questions"]["generations"] == res.stats["question_prompts"] and c["questions"]["replaced"] > 0
    assert c["rationales"]["generations"] == 4 * len(cfg.styles) and c["rationales"]["generations_acted"] > 0
    assert c["rationales"].get("finished_early", 0) + c["rationales"].get("finished_at_budget", 0) > 0
    assert res.stats["question_prompts_with_questions"] == res.stats["question_prompts_with_drafts"] > 0


def test_exact_match_answers_are_constrained_to_a_non_empty_tag() -> None:
    t = format_breaking_teacher()
    res = elicit_drafts(t, COUNT, COUNT.examples, ElicitConfig(n_questions=2, questions_per_prompt=2,
                                                               styles=("plain",), question_max_new_tokens=96,
                                                               rationale_max_new_tokens=40,
                                                               extract_answers=False))
    assert len(res.questions) == 2 and len(res.drafts) == 2
    assert all(d.answer.strip() and "\n" not in d.answer for d in res.drafts)


def test_seeds_are_stratified_by_label_and_rotate() -> None:
    # 6 seeds of 2 labels, sorted by label: any draw of the first three would show one label only.
    seeds = tuple(Example(f"s{i}", f"Player {i} scored", (OPTS[i // 3],), OPTS) for i in range(6))
    draws = [draw_seeds(seeds, 3, seed=0, index=i) for i in range(4)]
    for d in draws:
        assert len(d) == 3 and len(set(d)) == 3
        assert {e.answer for e in d} == set(OPTS)                 # every prompt sees both labels
    assert len({frozenset(e.id for e in d) for d in draws}) >= 2     # prompts see different seeds
    assert {e.id for d in draws[:2] for e in d} == {e.id for e in seeds}   # two prompts cover the pool
    assert draw_seeds(seeds, 3, seed=0, index=1) == draws[1]          # deterministic
    few = draw_seeds(seeds[:2], 3, seed=0, index=5)
    assert sorted(e.id for e in few) == ["s0", "s1"]                  # all of them when there are few
    lopsided = seeds[:5]                                              # 3 of one label, 2 of the other
    assert all({e.answer for e in draw_seeds(lopsided, 2, 0, i)} == set(OPTS) for i in range(6))


def test_elicitation_prompts_rotate_stratified_seeds() -> None:
    seeds = tuple(Example(f"s{i}", f"Player {i} scored", (OPTS[i // 3],), OPTS) for i in range(6))
    task = SPORTS.with_examples(seeds)
    t = ScriptedTeacher(lambda m, kw, i: "" if is_question_prompt(m) else "<ans>plausible</ans>")
    res = elicit_drafts(t, task, seeds, ElicitConfig(n_questions=5, max_question_prompts=4, batch_size=4))
    prompts = [conv for c in t.calls for conv in c["conversations"] if is_question_prompt(conv)]
    shown = [[e.id for e in seeds if f"Player {e.id[1:]} scored" in p[-1]["content"]] for p in prompts]
    assert all({OPTS[int(s[1:]) // 3] for s in ids} == set(OPTS) for ids in shown)
    assert len({tuple(sorted(ids)) for ids in shown}) >= 2 and res.stats["question_prompts"] == 4
