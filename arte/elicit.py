"""Elicitation: the teacher writes draft (question, rationale, answer) triples for students to score.

Contract: ``elicit_drafts(teacher, task, seeds, config, progress)`` returns an :class:`ElicitResult`: the
drafts (write them with :func:`arte.drafts.write_drafts`) and every rejection counted by reason. It only
talks to the teacher; nothing is read or written.

Steps (the paper's, §3.1):

1. Questions: :func:`arte.questions.generate_questions` (3 seeds → 5 new questions at T = 1.0, repeated
   to ``n_questions``; parsing, cleaning, de-duplication and its rejection reasons are documented there).
2. Rationales: each question is sent with each of the ``styles`` (K rationale prompts, the paper's four
   by default: :data:`arte.prompts.RATIONALE_STYLES`) at ``rationale_temperature``. With ``constrain``
   (the default) the teacher decodes inside :func:`arte.formats.rationale_format`: reasoning, then
   ``<ans>`` one of the question's options (exact match: a non-empty answer) ``</ans>``; a teacher that
   wants to stop early or runs low on tokens is made to finish with ``<ans>`` and the option it scores
   highest (:mod:`arte.constrain`). How often the constraint acted is in the summary (``constraint``).
3. Answer extraction (``extract_answers``, on by default; ours, after Kojima et al., 2022): a reply
   without a complete ``<ans>…</ans>`` is continued greedily as the teacher's own message
   ``{reply}\nTherefore, the answer is`` (up to ``answer_max_new_tokens``, to the end of the line). The
   answer is, for a multiple-choice question, the option named first in that continuation (whole words,
   case-insensitive), else the continuation up to its first sentence end, without a leading colon or
   trailing period; the rationale becomes ``{reply}\nTherefore, the answer is <ans>{answer}</ans>``.
   Small teachers reason but rarely write the tag (the embedded 135M model never does); this recovers
   their answer instead of losing the draft. Counted as the repair ``answer_extracted`` (replies that
   yielded an answer) and marked in the draft's provenance. Constrained replies have their tag, so this
   only acts on the rare reply the token budget cut short.
4. A reply is kept up to and including its first ``</ans>``; it becomes a draft when it passes
   :func:`check_rationale`, else it is rejected with one reason: ``empty``, ``no_answer`` (no complete,
   non-empty ``<ans>…</ans>``, also after extraction), ``answer_too_long``, ``rationale_too_long``,
   ``answer_not_an_option``.

Answers of multiple-choice questions: the answer inside ``<ans>`` must equal one of the options on the
question's ``Options:`` line after :func:`arte.answers.normalize_answer` (case, spacing, quotes and
trailing punctuation ignored; nothing more lenient: no option letters, no substrings); the draft's
``answer`` is then that option as the question spells it. Exact-match questions accept any non-empty
answer up to ``max_answer_chars``.

Summary (:meth:`ElicitResult.summary`): counts by reason and repair, ``question_prompts`` sent,
``question_prompts_with_questions`` and ``question_prompts_with_drafts`` (prompts that gave at least one
accepted question / usable draft), ``rationale_prompts``, and ``constraint`` — ``{"questions": counts,
"rationales": counts}`` with the keys of :data:`arte.constrain.COUNT_KEYS` (empty when not constrained).

Ids: question ``{id_prefix}q0007``, draft ``{id_prefix}q0007-{style}``. Provenance per draft: teacher,
adapter, question prompt id, seed example ids, both samplings (temperature, top_p, max_new_tokens, seed,
index in the call) and the rationale prompt (style).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from arte.answers import ANS_CLOSE, ANS_OPEN, normalize_answer, parse_answer
from arte.drafts import Draft
from arte.errors import ConfigError
from arte.formats import rationale_format
from arte.grammar import Format
from arte.progress import Progress, report
from arte.prompts import ANSWER_EXTRACTION, RATIONALE_STYLES, answer_extraction_prompt, rationale_prompt
from arte.questions import Question, QuestionConfig, generate_questions, parse_options
from arte.tasks import Example, Task
from arte.teacher import Teacher, teacher_id

__all__ = ["ElicitConfig", "ElicitResult", "elicit_drafts", "check_rationale", "trim_rationale",
           "write_rationales", "extract_answers", "extracted_answer", "rationale_formats"]

_CLOSE = re.compile(re.escape(ANS_CLOSE), re.IGNORECASE)


@dataclass(frozen=True)
class ElicitConfig(QuestionConfig):
    """Question settings (see :class:`arte.questions.QuestionConfig`) plus the rationales'.

    Args:
        styles: the K rationale prompts, names from :data:`arte.prompts.RATIONALE_STYLES`.
        rationale_temperature: sampling temperature of rationales (0: greedy, one per style).
        rationale_max_new_tokens: reply budget per rationale.
        max_answer_chars, max_rationale_chars: length bounds of an accepted draft.
        extract_answers: continue untagged replies with "Therefore, the answer is <ans>" (see above).
        answer_max_new_tokens: token budget of an extracted answer.
    """

    styles: tuple[str, ...] = tuple(RATIONALE_STYLES)
    rationale_temperature: float = 0.0
    rationale_max_new_tokens: int = 256
    max_answer_chars: int = 200
    max_rationale_chars: int = 4000
    extract_answers: bool = True
    answer_max_new_tokens: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.styles, list):   # configs built from JSON
            object.__setattr__(self, "styles", tuple(self.styles))
        if isinstance(self.styles, str) or not self.styles:
            raise ConfigError("styles", "must be a non-empty tuple of style names")
        unknown = [s for s in self.styles if s not in RATIONALE_STYLES]
        if unknown:
            raise ConfigError("styles", f"unknown style {unknown[0]!r}; known: {', '.join(RATIONALE_STYLES)}")
        if len(set(self.styles)) != len(self.styles):
            raise ConfigError("styles", "a style is listed twice")
        if not 0.0 <= self.rationale_temperature <= 10.0:
            raise ConfigError("rationale_temperature", f"must be in [0, 10], got {self.rationale_temperature}")
        for name in ("rationale_max_new_tokens", "max_answer_chars", "max_rationale_chars",
                     "answer_max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {v!r}")


@dataclass
class ElicitResult:
    """Drafts, the questions they answer, and what was rejected or repaired (counts by reason)."""

    drafts: list[Draft]
    questions: list[Question]
    question_rejections: dict[str, int]
    draft_rejections: dict[str, int]
    repairs: dict[str, int]
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the drafts' text, JSON-ready (for reports and ``--json``)."""
        return {"drafts": len(self.drafts), "questions": len(self.questions),
                "question_rejections": dict(self.question_rejections),
                "draft_rejections": dict(self.draft_rejections), "repairs": dict(self.repairs), **self.stats}


def trim_rationale(text: str) -> str:
    """The reply up to and including its first ``</ans>`` (all of it when there is none), stripped."""
    m = _CLOSE.search(text)
    return (text[:m.end()] if m else text).strip()


def check_rationale(question: str, text: str, *, multiple_choice: bool, max_answer_chars: int = 200,
                    max_rationale_chars: int = 4000) -> tuple[str, str, str | None]:
    """``(rationale, answer, None)`` for a usable reply, else ``("", "", reason)``; see the module
    docstring for the reasons and the option rule."""
    rationale = trim_rationale(text)
    if not rationale:
        return "", "", "empty"
    answer = parse_answer(rationale)
    if answer is None:
        return "", "", "no_answer"
    if len(answer) > max_answer_chars:
        return "", "", "answer_too_long"
    if len(rationale) > max_rationale_chars:
        return "", "", "rationale_too_long"
    if multiple_choice:
        options = parse_options(question) or ()
        key = normalize_answer(answer)
        match = [o for o in options if normalize_answer(o) == key]
        if not match:
            return "", "", "answer_not_an_option"
        answer = match[0]
    return rationale, answer, None


def extracted_answer(continuation: str, options: Sequence[str] | None) -> str | None:
    """The answer stated in an extraction continuation (see step 3), or None."""
    text = continuation.replace(ANS_OPEN, " ").replace(ANS_CLOSE, " ")
    if options:
        hits = []
        for o in options:
            m = re.search(rf"(?<!\w){re.escape(o.strip())}(?!\w)", text, re.IGNORECASE)
            if m is not None:
                hits.append((m.start(), -len(o), o))
        return min(hits)[2] if hits else None
    answer = re.split(r"\.(?:\s|$)", text.strip().lstrip(":").strip(), maxsplit=1)[0].strip()
    return answer or None


def extract_answers(teacher: Teacher, conversations: Sequence[Sequence[dict[str, str]]], replies: Sequence[str],
                    options: Sequence[Sequence[str] | None], *, max_new_tokens: int = 16,
                    batch_size: int = 16) -> list[str | None]:
    """For each reply without a complete answer tag, the reply completed by answer extraction (step 3 of
    the module docstring); None where the reply already had an answer or the teacher stated none.
    ``options[i]`` are the options of conversation ``i``'s question (None: exact match)."""
    todo = [i for i, r in enumerate(replies) if parse_answer(trim_rationale(r)) is None]
    out: list[str | None] = [None] * len(replies)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        convs = [answer_extraction_prompt(conversations[i], replies[i]) for i in chunk]
        texts = teacher.chat(convs, temperature=0.0, max_new_tokens=max_new_tokens, stop=["\n"])
        for i, text in zip(chunk, texts):
            answer = extracted_answer(text, options[i])
            if answer is not None:
                head = f"{replies[i].rstrip()}\n" if replies[i].strip() else ""
                out[i] = f"{head}{ANSWER_EXTRACTION} {ANS_OPEN}{answer}{ANS_CLOSE}"
    return out


def rationale_formats(questions: Sequence[Question], *, multiple_choice: bool, min_chars: int = 0,
                      max_chars: int = 4000, max_answer_chars: int = 200) -> list[Format]:
    """Each question's rationale format (:func:`arte.formats.rationale_format`): its own options for a
    multiple-choice task, a free non-empty answer otherwise. ``max_chars`` bounds the whole rationale as
    :func:`check_rationale` counts it, the answer tag included, so the reasoning gets what the tag leaves
    (an endpoint cannot finish early: a reply that used the grammar's whole bound must still pass)."""
    out = []
    for q in questions:
        options = parse_options(q.text) if multiple_choice else None
        tag = len(ANS_OPEN) + len(ANS_CLOSE) + (max(map(len, options)) if options else max_answer_chars)
        out.append(rationale_format(options, min_chars=min_chars, max_chars=max(min_chars, max_chars - tag),
                                    max_answer_chars=max_answer_chars))
    return out


def write_rationales(teacher: Teacher, task: Task, questions: Sequence[Question], styles: Sequence[str], *,
                     temperature: float, max_new_tokens: int, seed: int, batch_size: int, top_p: float = 1.0,
                     extract: bool = False, answer_max_new_tokens: int = 16, progress: Progress | None = None,
                     stage: str = "rationales", formats: Sequence[Format] | None = None,
                     counts: dict[str, int] | None = None) -> tuple[list[list[str]], set[tuple[int, int]]]:
    """The teacher's reply for every (question, style), as ``replies[question][style index]``, and the
    (question, style index) pairs whose answer was extracted (with ``extract``). ``formats[qi]``
    constrains the replies to question ``qi`` (what the constraint did is added to ``counts``)."""
    jobs = [(qi, si) for qi in range(len(questions)) for si in range(len(styles))]
    replies: list[list[str]] = [[""] * len(styles) for _ in questions]
    extracted: set[tuple[int, int]] = set()
    report(progress, stage, 0, len(jobs))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        convs = [rationale_prompt(task, questions[qi].text, styles[si]) for qi, si in chunk]
        constraint = ({"formats": [formats[qi] for qi, _ in chunk], "counts": counts if counts is not None else {}}
                      if formats is not None else {})
        texts = teacher.chat(convs, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                             seed=seed + start, **constraint)
        if extract:
            opts = [parse_options(questions[qi].text) for qi, _ in chunk]
            completed = extract_answers(teacher, convs, texts, opts, max_new_tokens=answer_max_new_tokens,
                                        batch_size=batch_size)
            for k, full in enumerate(completed):
                if full is not None:
                    texts[k] = full
                    extracted.add(chunk[k])
        for (qi, si), text in zip(chunk, texts):
            replies[qi][si] = text
        report(progress, stage, start + len(chunk), len(jobs))
    return replies, extracted


def elicit_drafts(teacher: Teacher, task: Task, seeds: Sequence[Example], config: ElicitConfig = ElicitConfig(),
                  progress: Progress | None = None) -> ElicitResult:
    """Elicit drafts for ``task`` from ``teacher``, prompted with ``seeds`` (see the module docstring).

    ``progress(stage, done, total)`` is called per teacher call for the stages ``questions`` and
    ``rationales``. Stable entry point: the server's job worker calls it by this name.
    """
    t0 = time.perf_counter()
    qres = generate_questions(teacher, task, seeds, config, progress)
    multiple_choice = bool(seeds) and all(e.is_multiple_choice for e in seeds)
    rationale_seed = config.seed + 1_000_000
    counts: dict[str, int] = {}
    formats = (rationale_formats(qres.questions, multiple_choice=multiple_choice,
                                 max_chars=config.max_rationale_chars, max_answer_chars=config.max_answer_chars)
               if config.constrain else None)
    replies, extracted = write_rationales(teacher, task, qres.questions, config.styles,
                                          temperature=config.rationale_temperature,
                                          max_new_tokens=config.rationale_max_new_tokens, seed=rationale_seed,
                                          batch_size=config.batch_size, top_p=config.top_p,
                                          extract=config.extract_answers,
                                          answer_max_new_tokens=config.answer_max_new_tokens, progress=progress,
                                          formats=formats, counts=counts)
    drafts: list[Draft] = []
    rejections: dict[str, int] = {}
    with_drafts: set[str] = set()
    k = len(config.styles)
    for qi, (q, texts) in enumerate(zip(qres.questions, replies)):
        for si, (style, text) in enumerate(zip(config.styles, texts)):
            rationale, answer, reason = check_rationale(q.text, text, multiple_choice=multiple_choice,
                                                        max_answer_chars=config.max_answer_chars,
                                                        max_rationale_chars=config.max_rationale_chars)
            if reason is not None:
                rejections[reason] = rejections.get(reason, 0) + 1
                continue
            index = qi * k + si
            start = index - index % config.batch_size
            prov = {**q.provenance, **teacher_id(teacher), "rationale_prompt": style,
                    "rationale_sampling": {"temperature": config.rationale_temperature, "top_p": config.top_p,
                                           "max_new_tokens": config.rationale_max_new_tokens,
                                           "seed": rationale_seed + start, "index": index - start},
                    "answer_extracted": (qi, si) in extracted}
            drafts.append(Draft(id=f"{q.id}-{style}", question=q.text, rationale=rationale, answer=answer,
                                question_id=q.id, style=style, task=task.name, provenance=prov))
            with_drafts.add(q.provenance["question_prompt"])
    repairs = dict(qres.repairs)
    if extracted:
        repairs["answer_extracted"] = len(extracted)
    stats = {"question_prompts": qres.prompts, "question_prompts_with_questions": qres.productive_prompts,
             "question_prompts_with_drafts": len(with_drafts), "question_shortfall": qres.shortfall,
             "rationale_prompts": len(qres.questions) * k,
             "constraint": {"questions": qres.constraint, "rationales": counts} if config.constrain else {},
             "seconds": round(time.perf_counter() - t0, 3), **teacher_id(teacher)}
    return ElicitResult(drafts, qres.questions, qres.rejections, rejections, repairs, stats)
