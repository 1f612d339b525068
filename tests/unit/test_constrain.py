"""The format language (regex, GBNF, byte automaton), the draft formats, and the token guard."""

from __future__ import annotations

import re

import numpy as np
import pytest

from arte.constrain import TokenGuard, Vocabulary, check_formats, sample
from arte.errors import ConfigError
from arte.formats import option_shape, options_node, question_format, rationale_format, shared_options
from arte.grammar import DIGITS, Alt, CharClass, Chars, Format, Items, Lit, Opt, Seq
from arte.prompts import seed_question
from arte.tasks import Example, Task

OPTS = ("plausible", "implausible")
SPORTS = Task("sports", "Judge.", tuple(Example(f"s{i}", f"Player {i} scored", (OPTS[i % 2],), OPTS)
                                        for i in range(4)), input_prefix="Statement:")
DATES = Task("dates", "Infer the date.", (
    Example("d0", "Today is 01/02/2020. What is tomorrow?", ("01/03/2020",),
            ("01/03/2020", "02/03/2020", "12/31/2019", "01/01/2020", "03/03/2021", "01/03/1999")),
    Example("d1", "Yesterday was 05/05/2021. What is today?", ("05/06/2021",),
            ("05/06/2021", "05/04/2021", "06/06/2021", "04/06/2021", "05/06/2020"))))
LETTERS = ("(a)", "(b)", "(c)", "(d)")
ABCD = Task("abcd", "Pick one.", tuple(
    Example(f"a{i}", f"Which is a fruit? (a) apple (b) car (c) rock (d) pen [{i}]", (LETTERS[i],), LETTERS)
    for i in range(4)))
WORDS = Task("words", "Pick the animal.", (
    Example("w0", "Which is an animal?", ("the cat",), ("the cat", "a rock", "blue sky", "old car")),
    Example("w1", "Which one barks?", ("a dog",), ("a tree", "a dog", "the sea", "my hat"))))


def run(fmt: Format, text: str) -> bool:
    """The automaton and Python's re (on the rendered regex) must agree; returns their verdict."""
    by_regex = re.fullmatch(fmt.regex(), text, re.DOTALL) is not None
    assert fmt.matcher().matches(text) == by_regex, (fmt.regex(), text)
    return by_regex


# ---- the format language ----------------------------------------------------------------------------

def test_rendering_of_each_node_kind() -> None:
    fmt = Format(Seq((Lit('Q: "x" (1)\n'), Chars(CharClass("<\n", negate=True), 1, 300, soft=True),
                      Alt((Lit("a"), Lit("b.c"))), Opt(Seq((Lit(", "), Chars(DIGITS, 2, 4)))))))
    assert fmt.regex() == 'Q: "x" \\(1\\)\\n[^\\n<]+(a|b\\.c)(, [0-9]{2,4})?'
    assert fmt.gbnf() == 'root ::= "Q: \\"x\\" (1)\\n" [^\\n<]+ ("a" | "b.c") (", " [0-9]{2,4})?\n'
    assert fmt.finish_bytes() == len('Q: "x" (1)\n') + 1 + 3          # soft run at its minimum, Opt skipped


@pytest.mark.parametrize("text, ok", [
    ('Q: "x" (1)\nhello a', True), ('Q: "x" (1)\nhello b.c, 123', True), ('Q: "x" (1)\nhello b.c, 1', False),
    ('Q: "x" (1)\na', False), ('Q: "x" (1)\nhi <a', False), ('Q: "x" (1)\nhi\nthere a', False),
    ('Q: "x" (1)\nnaïve café b.c', True), ('Q: "x" (1)\nhello bxc', False)])
def test_automaton_agrees_with_the_regex(text, ok) -> None:
    fmt = Format(Seq((Lit('Q: "x" (1)\n'), Chars(CharClass("<\n", negate=True), 1, 300, soft=True),
                      Alt((Lit("a"), Lit("b.c"))), Opt(Seq((Lit(", "), Chars(DIGITS, 2, 4)))))))
    assert run(fmt, text) is ok


def test_finishing_closes_soft_runs_and_optional_parts() -> None:
    fmt = Format(Seq((Chars(CharClass("<", negate=True), 2, 100, soft=True), Lit("<"), Opt(Lit("more")))))
    m = fmt.matcher()
    k = m.advance(m.start, b"abc")
    assert m.next_bytes(k) >= {ord("x"), ord("<")}
    assert m.next_bytes(k, finishing=True) == {ord("<")}               # free text is over
    k = m.advance(k, b"<")
    assert m.accepting(k) and m.next_bytes(k) == {ord("m")}
    assert m.accepting(k, True) and not m.next_bytes(k, finishing=True)   # the optional part is skipped
    short = m.advance(m.start, b"a")
    starts = {b for b in range(256) if b < 0x80 or 0xC2 <= b <= 0xF4}                # UTF-8 lead bytes
    assert m.next_bytes(short, finishing=True) == starts - {ord("<")}                 # the minimum first


def test_runs_take_only_whole_utf8_characters() -> None:
    m = Format(Chars(CharClass("<", negate=True), 1, 10)).matcher()
    assert m.matches("é") and m.matches("日本")
    assert not m.advance(m.start, b"\x80")                       # a continuation byte cannot start
    half = m.advance(m.start, "é".encode()[:1])
    assert half and not m.accepting(half)                        # half a character cannot end the reply
    assert m.next_bytes(half) == frozenset(range(0x80, 0xC0)) and not m.advance(half, b"a")


def test_bad_nodes_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        CharClass("é")
    with pytest.raises(ConfigError):
        Chars(DIGITS, 3, 2)
    with pytest.raises(ConfigError):
        Alt(())


# ---- the draft formats ------------------------------------------------------------------------------

def test_option_shapes() -> None:
    dates = [o for e in DATES.examples for o in e.choices]
    assert Format(option_shape(dates)).regex() == "[0-9]{2}/[0-9]{2}/[0-9]{4}"
    assert Format(option_shape(["True", "False"])).regex() == "[A-Z][a-z]{3,4}"
    assert option_shape(["the cat", "a rock", "blue sky"]) is not None      # lower, space, lower
    assert option_shape(["the cat", "A rock"]) is None                     # the runs differ
    assert option_shape(["12", "1/2"]) is None


def test_options_lines() -> None:
    assert options_node(SPORTS.examples) == Lit("\nOptions: plausible, implausible")
    assert shared_options(ABCD.examples) == LETTERS
    fmt = Format(Seq((Lit("x"), options_node(DATES.examples))))
    assert run(fmt, "x\nOptions: 01/02/2020, 01/03/2020, 01/04/2020, 01/05/2020, 01/06/2020")        # 5
    assert run(fmt, "x\nOptions: 01/02/2020, 01/03/2020, 01/04/2020, 01/05/2020, 01/06/2020, 01/07/2020")
    assert not run(fmt, "x\nOptions: 01/02/2020, 01/03/2020, 01/04/2020, 01/05/2020")                  # 4
    assert not run(fmt, "x\nOptions: 1/2/2020, 01/03/2020, 01/04/2020, 01/05/2020, 01/06/2020")       # shape
    m = fmt.matcher()                                # options must differ (the automaton; a regex cannot say it)
    assert not m.matches("x\nOptions: 01/02/2020, 01/03/2020, 01/02/2020, 01/05/2020, 01/06/2020")
    near = m.advance(m.start, b"x\nOptions: 01/02/2020, 01/02/202")
    assert near and not m.step(near, ord("0")) and m.step(near, ord("3"))    # the repeat dies at its last byte


def test_items_are_distinct_ignoring_case_and_spacing() -> None:
    fmt = Format(Items(Chars(CharClass(",\n", negate=True), 1, 20), ", ", 2, 3))
    assert fmt.regex() == "[^\\n,]{1,20}(, [^\\n,]{1,20}){1,2}"
    assert fmt.gbnf() == 'root ::= [^\\n,]{1,20} (", " [^\\n,]{1,20}){1,2}\n'
    m = fmt.matcher()
    assert m.matches("a cat, a dog") and m.matches("a cat, a dog, a cow") and not m.matches("a cat")
    assert not m.matches("a cat, A  Cat!") and not m.matches("a cat, a dog, a cat")
    assert re.fullmatch(fmt.regex(), "a cat, a cat")                   # the rendered pattern cannot tell
    k = m.advance(m.start, b"a cat, a dog")
    assert m.next_bytes(k, finishing=True) == frozenset(b for b in range(256) if b not in b",\n"
                                                        and (b < 0x80 or 0xC2 <= b <= 0xF4))   # no third
    assert options_node(()) is None and options_node((Example("e", "q", ("a",)),)) is None


@pytest.mark.parametrize("task", [SPORTS, DATES, ABCD, WORDS])
def test_question_format_accepts_the_seeds_own_questions(task) -> None:
    fmt = question_format(task, task.examples, 3, min_chars=10)
    qs = [seed_question(task, e) for e in task.examples[:3]]
    assert run(fmt, f"Question 1: {qs[0]}")
    assert run(fmt, f"Question 1: {qs[0]}\n\nQuestion 2: {qs[1]}")
    assert not run(fmt, f"Question 1: {qs[0]}\n\nQuestion 3: {qs[1]}")          # numbered in order
    stem = qs[0][:qs[0].rindex("\nOptions:")]
    assert not run(fmt, f"Question 1: {stem}")                                  # the options line is required
    assert not run(fmt, f"Question 1: {stem}\nOptions: yes, no")
    assert not run(fmt, f"1. {qs[0]}")


def test_seed_question_adds_the_options_line_when_the_input_lists_the_options() -> None:
    q = seed_question(ABCD, ABCD.examples[0])
    assert q.endswith("[0]\nOptions: (a), (b), (c), (d)")
    assert seed_question(SPORTS, SPORTS.examples[0]) == "Statement: Player 0 scored\nOptions: plausible, implausible"


def test_rationale_format() -> None:
    fmt = rationale_format(["05/01/2021", "05/11/2021"])
    assert run(fmt, "Count the days.\nSo <ans>05/11/2021</ans>")
    assert run(fmt, "<ans>05/01/2021</ans>")
    assert not run(fmt, "So <ans>05/02/2021</ans>") and not run(fmt, "a < b <ans>05/01/2021</ans>")
    assert not run(fmt, "So <ans>05/01/2021</ans> done")
    free = rationale_format(None, max_answer_chars=5)
    assert run(free, "Four. <ans>4 or 5</ans>") is False and run(free, "Four. <ans>four</ans>")
    assert not run(free, "<ans> </ans>")


# ---- the token guard --------------------------------------------------------------------------------

def vocab(*words: str) -> Vocabulary:
    pieces = [bytes([b]) for b in range(256)] + [w.encode() for w in words] + [b""]
    return Vocabulary(pieces, frozenset({len(pieces) - 1}), len(pieces) - 1)


def decode(guard: TokenGuard, v: Vocabulary, wants: list[int], *, scores: dict[int, float] | None = None) -> str:
    """Feed the guard: the model samples ``wants`` in turn (then the end); returns the emitted text."""
    out = b""
    for step in range(guard.max_new_tokens):
        sampled = wants[step] if step < len(wants) else v.eos
        logits = np.zeros(len(v.pieces))
        for t, s in (scores or {}).items():
            logits[t] = s
        logits[sampled] += 5.0
        t = guard.choose(sampled, logits, np.random.default_rng(step))
        if t == v.eos:
            break
        out += v.pieces[t]
    return out.decode()


def test_guard_keeps_a_reply_that_follows_the_format() -> None:
    v = vocab("<ans>", "</ans>", "plausible")
    fmt = rationale_format(OPTS)
    counts: dict[str, int] = {}
    g = TokenGuard(fmt, v, max_new_tokens=64, counts=counts)
    text = decode(g, v, list(b"Fine. ") + [256, 258, 257])
    assert text == "Fine. <ans>plausible</ans>"
    assert counts == {"generations": 1, "tokens": 10}                  # 9 tokens + the end, nothing replaced


def test_guard_finishes_a_reply_that_stops_early_or_strays() -> None:
    v = vocab("<ans>", "</ans>", "plausible", "implausible")
    counts: dict[str, int] = {}
    g = TokenGuard(rationale_format(OPTS), v, max_new_tokens=64, counts=counts)
    # "x < y" strays ('<' is not reasoning text), then the model wants to stop: it must finish, and
    # the options are chosen by score (here "implausible" scores above "plausible").
    text = decode(g, v, list(b"x < y"), scores={259: 3.0, 258: 1.0})
    assert re.fullmatch(r"x [^<]?.*<ans>implausible</ans>", text, re.DOTALL), text
    assert counts["finished_early"] == 1 and counts["replaced"] >= 2 and counts["generations_acted"] == 1


def test_guard_finishes_when_the_budget_runs_low() -> None:
    v = vocab("<ans>", "</ans>")
    counts: dict[str, int] = {}
    fmt = rationale_format(OPTS)
    g = TokenGuard(fmt, v, max_new_tokens=40, counts=counts)
    text = decode(g, v, list(b"a" * 100))                                # rambles past the budget
    assert fmt.matcher().matches(text) and text.startswith("a" * (40 - fmt.finish_bytes()))
    assert counts["finished_at_budget"] == 1 and "incomplete" not in counts


def test_guard_ends_a_complete_reply_and_reports_an_impossible_one() -> None:
    v = vocab()
    counts: dict[str, int] = {}
    g = TokenGuard(Format(Lit("ok")), v, max_new_tokens=8, counts=counts)
    assert decode(g, v, list(b"ok, and more")) == "ok"                   # the end is emitted after "ok"
    tiny = Vocabulary([b"a", b""], frozenset({1}), 1)                    # no token can write "ok"
    g = TokenGuard(Format(Lit("ok")), tiny, max_new_tokens=8, counts=counts)
    assert g.choose(0, np.zeros(2)) == 1 and counts["incomplete"] == 1


def test_guard_resamples_among_valid_tokens_at_temperature() -> None:
    v = vocab()
    fmt = Format(Alt((Lit("a"), Lit("b"), Lit("c"))))
    logits = np.zeros(len(v.pieces))
    logits[ord("z")] = 10.0                                              # the model's favourite is invalid
    picks = set()
    for s in range(40):
        g = TokenGuard(fmt, v, max_new_tokens=4, temperature=1.0)
        picks.add(g.choose(ord("z"), logits, np.random.default_rng(s)))
    assert picks == {ord("a"), ord("b"), ord("c")}
    g = TokenGuard(fmt, v, max_new_tokens=4, temperature=1.0)
    again = TokenGuard(fmt, v, max_new_tokens=4, temperature=1.0)
    assert g.choose(ord("z"), logits, np.random.default_rng(3)) == again.choose(ord("z"), logits,
                                                                                np.random.default_rng(3))


def test_sample_and_argument_checks() -> None:
    x = np.array([0.0, 5.0, 1.0])
    assert sample(x, 0.0, 1.0, None) == 1
    assert sample(x, 1.0, 0.01, np.random.default_rng(0)) == 1             # top-p keeps the best only
    assert check_formats(None, 2) == [None, None]
    with pytest.raises(ConfigError, match="formats"):
        check_formats([None], 2)
    with pytest.raises(ConfigError, match=r"formats\[0\]"):
        check_formats(["regex"], 1)
    with pytest.raises(ConfigError, match="eos"):
        Vocabulary([b"a", b""], frozenset({1}), 0)
