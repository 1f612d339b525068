"""The draft formats: what a teacher's question replies and rationales must look like, as
:class:`arte.grammar.Format` values that constrain every backend's decoding.

Contract:

* :func:`question_format` — a question-prompt reply: ``Question 1: {stem}`` up to ``Question {n}:``,
  blocks separated by a blank line. For a multiple-choice task each block ends in an options line:

  - a *fixed-option* task (every seed has the same option set, :func:`shared_options`): exactly the
    task's line, e.g. ``Options: plausible, implausible``;
  - otherwise ``Options: a, b, c`` with as many options as the seeds have (their minimum to their
    maximum), pairwise distinct (where the automaton decides; a regex cannot say it), each in the seeds'
    common *shape* when they share one (:func:`option_shape`: e.g. ``05/01/2021`` gives two digits,
    ``/``, two digits, ``/``, four digits), else any text without ``,``, ``<`` or a line break, up to
    twice the seeds' longest option.

  The stem is one line (several lines, no blank one, when a seed's stem has several), without ``<``
  (``<ans>`` in a question would be cut by the question filter), of ``min_chars`` bytes up to twice the
  seeds' longest stem (at least 200 bytes), and never so long that the question would pass
  ``max_chars``: a teacher that rambles is made to close the question.
* :func:`rationale_format` — a rationale: free reasoning without ``<``, then ``<ans>{answer}</ans>`` and
  the end. The answer is one of the question's options, written as listed (multiple choice), or any
  non-empty text without ``<`` or a line break of up to ``max_answer_chars`` bytes (exact match).

What the formats cannot say is still checked after decoding, with the usual rejection reasons
(duplicates, distinct options, lengths): see :mod:`arte.questions` and :mod:`arte.elicit`.
"""

from __future__ import annotations

from typing import Sequence

from arte.answers import ANS_CLOSE, ANS_OPEN
from arte.grammar import (
    CONTROL,
    DIGITS,
    LOWER,
    UPPER,
    Alt,
    CharClass,
    Chars,
    Format,
    Items,
    Lit,
    Node,
    Opt,
    Seq,
)
from arte.prompts import OPTIONS_LABEL, seed_question
from arte.tasks import Example, Task

__all__ = ["question_format", "rationale_format", "option_shape", "options_node", "shared_options",
           "QUESTION_FORMAT", "RATIONALE_FORMAT"]

QUESTION_FORMAT = "question"
RATIONALE_FORMAT = "rationale"

_TEXT = CharClass("\n<" + CONTROL, negate=True)           # a line of text
_FIRST = CharClass("\n< \t" + CONTROL, negate=True)       # its first character: not blank
_REASONING = CharClass("<" + CONTROL, negate=True)        # reasoning, any lines
_OPTION = CharClass(",\n<" + CONTROL, negate=True)        # an option without a shape


def shared_options(seeds: Sequence[Example]) -> tuple[str, ...] | None:
    """The option set every seed shares (in the first seed's order), or None when they differ or a seed
    is not multiple-choice."""
    if not seeds or not all(e.is_multiple_choice for e in seeds):
        return None
    first = seeds[0].choices
    return first if all(set(e.choices) == set(first) for e in seeds) else None


def _runs(text: str) -> list[tuple[str, str]]:
    """``text`` as runs: ("d"/"u"/"l", run) for digits, upper- and lower-case ASCII letters, ("=", c) for
    any other character."""
    out: list[tuple[str, str]] = []
    for c in text:
        kind = "d" if c in DIGITS.chars else "u" if c in UPPER.chars else "l" if c in LOWER.chars else "="
        if kind != "=" and out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + c)
        else:
            out.append((kind, c))
    return out


def option_shape(options: Sequence[str]) -> Node | None:
    """The shape all ``options`` share, or None: the same sequence of digit / upper-case / lower-case
    runs and the same other characters in between (run lengths may vary between their extremes)."""
    runs = [_runs(o) for o in options]
    if not runs or not runs[0]:
        return None
    skeleton = [(k, r if k == "=" else "") for k, r in runs[0]]
    if any([(k, r if k == "=" else "") for k, r in rs] != skeleton for rs in runs[1:]):
        return None
    classes = {"d": DIGITS, "u": UPPER, "l": LOWER}
    parts: list[Node] = []
    for i, (kind, lit) in enumerate(skeleton):
        if kind == "=":
            if parts and isinstance(parts[-1], Lit):
                parts[-1] = Lit(parts[-1].text + lit)
            else:
                parts.append(Lit(lit))
        else:
            lengths = [len(rs[i][1]) for rs in runs]
            parts.append(Chars(classes[kind], min(lengths), max(lengths)))
    return parts[0] if len(parts) == 1 else Seq(tuple(parts))


def options_node(seeds: Sequence[Example]) -> Node | None:
    """The options line (with its leading line break) of a question like the seeds, or None for an
    exact-match task (see the module docstring)."""
    if not seeds or not all(e.is_multiple_choice for e in seeds):
        return None
    fixed = shared_options(seeds)
    if fixed is not None:
        return Lit(f"\n{OPTIONS_LABEL} {', '.join(fixed)}")
    every = [o for e in seeds for o in e.choices]
    one = option_shape(every) or Chars(_OPTION, 1, 2 * max(len(o.encode("utf-8")) for o in every))
    counts = [len(e.choices) for e in seeds]
    return Seq((Lit(f"\n{OPTIONS_LABEL} "), Items(one, ", ", max(2, min(counts)), max(counts))))


def _stem(task: Task, seeds: Sequence[Example], min_chars: int, max_chars: int) -> Node:
    stems = [_stem_text(task, e) for e in seeds]
    options = max(len(seed_question(task, e).encode("utf-8")) - len(t.encode("utf-8"))
                  for e, t in zip(seeds, stems))
    longest = min(max(200, 2 * max(len(t.encode("utf-8")) for t in stems)), max_chars - 2 * options)
    longest = max(longest, min_chars, 1)
    first = Seq((Chars(_FIRST, 1, 1), Chars(_TEXT, max(0, min_chars - 1), longest - 1, soft=True)))
    lines = max(t.count("\n") + 1 for t in stems)
    if lines == 1:
        return first
    more: Node | None = None
    for _ in range(lines):                     # up to one line more than the longest seed
        more = Opt(Seq((Lit("\n"), Chars(_FIRST, 1, 1), Chars(_TEXT, 0, longest, soft=True))
                       + ((more,) if more is not None else ())))
    return Seq((first, more))


def _stem_text(task: Task, example: Example) -> str:
    text = seed_question(task, example).strip()
    if example.is_multiple_choice:
        text = text[:text.rfind(f"\n{OPTIONS_LABEL}")]
    return text


def question_format(task: Task, seeds: Sequence[Example], n: int, *, min_chars: int = 10,
                    max_chars: int = 1000) -> Format:
    """The format of a reply to a question prompt asking for ``n`` questions like ``seeds``."""
    if not seeds:
        raise ValueError("a question format needs seed examples")
    stem = _stem(task, seeds, min_chars, max_chars)
    options = options_node(seeds)
    more: Node | None = None
    for k in range(n, 1, -1):                  # optional further questions, nested
        block = Seq((Lit(f"\n\nQuestion {k}: "), stem) + ((options,) if options else ()))
        more = Opt(Seq((block,) + ((more,) if more is not None else ())))
    root = Seq((Lit("Question 1: "), stem) + ((options,) if options else ()) + ((more,) if more else ()))
    return Format(root, QUESTION_FORMAT)


def rationale_format(options: Sequence[str] | None, *, min_chars: int = 0, max_chars: int = 4000,
                     max_answer_chars: int = 200) -> Format:
    """The format of a rationale: reasoning, then ``<ans>`` one of ``options`` (or, with None, a
    non-empty answer) ``</ans>``."""
    if options:
        answer: Node = Alt(tuple(Lit(o) for o in dict.fromkeys(options)))
    else:
        answer = Seq((Chars(_FIRST, 1, 1), Chars(_TEXT, 0, max_answer_chars - 1)))
    reasoning = Chars(_REASONING, min_chars, max(min_chars, max_chars), soft=True)
    return Format(Seq((reasoning, Lit(ANS_OPEN), answer, Lit(ANS_CLOSE))), RATIONALE_FORMAT)
