"""Question generation: prompt a teacher with seed examples, parse what it writes, keep the good ones.

Contract: :func:`generate_questions` asks the teacher (``question_prompt``: ``n_seeds`` seed examples,
"write ``questions_per_prompt`` more", temperature ``question_temperature``) again and again until it has
``n_questions`` accepted questions or has sent ``max_question_prompts`` prompts, and returns the accepted
questions with provenance plus a count of every rejection by reason. Each teacher call carries up to
``batch_size`` prompts: as many as the missing questions need at the acceptance rate seen so far.
Elicitation (:mod:`arte.elicit`) and tailoring (:mod:`arte.tailor`) both use it.

Seeds (:func:`draw_seeds`): when more seeds are given than a prompt shows, each prompt's seeds are
stratified by label (the answer) and rotate across prompts: prompt ``i`` fills its ``n_seeds`` slots
``i·n_seeds …`` from the labels in turn (a shuffled label order), each label from its own shuffled seeds
in turn, so every prompt covers ``min(n_seeds, labels)`` labels and consecutive prompts see different
seeds. With no more seeds than a prompt shows, every prompt shows them all.

Constrained decoding (``constrain``, on by default): the teacher decodes inside
:func:`arte.formats.question_format` — ``Question k:`` markers, and for a multiple-choice task the options
line (the task's own for a fixed-option task) — so the repairs and most rejections below cannot happen;
how often the constraint acted is counted (:mod:`arte.constrain`). The parsing below still runs: it is
what an unconstrained teacher (``constrain=False``) relies on, and it checks what a format cannot say.

Parsing (:func:`split_questions`) survives malformed output: a reply is split at lines that start with a
question marker (``Question 3:``, ``**Question 3.**``, ``Q3)``, ``Q:``; if there is none, at numbered
lines ``3.``/``3)``); text before the first marker is preamble. Each block is cleaned and checked
(:class:`QuestionFilter`), and rejected with one reason:

* ``no_question_marker`` (per reply): the reply has no marker at all; ``empty_reply`` (per reply).
* ``empty``, ``too_short``, ``too_long``: the block's length in characters after cleaning (for
  ``too_short``, without its options line).
* ``no_options`` / ``bad_options`` / ``options_differ_from_task`` (multiple-choice tasks): see below.
* ``duplicate_of_seed``: equal to a seed question; ``duplicate``: equal to an accepted question
  (equality of :func:`normalize_question`: NFKC, case-folded, punctuation and spacing ignored).

Cleaning, counted as repairs (the question is kept): an ``Answer: …`` line or ``<ans>`` and what follows
is cut (``answer_removed``); when no seed question contains a blank line, the block ends at its first
blank line (``trailing_text_removed``).

Multiple-choice tasks (every seed has choices): a question must carry an ``Options: a, b, c`` line (the
format of :func:`arte.tasks.format_question`; options are split at ", "), with at least two distinct
options; text after the options line is cut. When all seeds share one option set (a fixed-option task,
e.g. plausible/implausible) a question without an options line gets that line appended
(``options_added``), and a question listing a different set is rejected; otherwise a question without
options is rejected.
"""

from __future__ import annotations

import logging
import math
import random
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Sequence

from arte.answers import normalize_answer
from arte.errors import ConfigError
from arte.formats import question_format, shared_options
from arte.progress import Progress, report
from arte.prompts import OPTIONS_LABEL, question_prompt, seed_question
from arte.tasks import Example, Task
from arte.teacher import Teacher, teacher_id

__all__ = ["QuestionConfig", "Question", "QuestionResult", "QuestionFilter", "generate_questions",
           "split_questions", "normalize_question", "parse_options", "shared_options", "draw_seeds"]

log = logging.getLogger(__name__)

_MARKER = re.compile(r"^[ \t>#*_]*(?:question|q)[ \t]*(?:\d+[ \t]*[:.)]|:)[*_ \t]*", re.IGNORECASE | re.MULTILINE)
_NUMBERED = re.compile(r"^[ \t>#*_]*\d+[ \t]*[.)][*_ \t]+", re.MULTILINE)
_ANSWER = re.compile(r"(?:^[ \t*_]*(?:answer|a)[ \t]*:|<ans>)", re.IGNORECASE | re.MULTILINE)
_OPTIONS = re.compile(rf"^[ \t*_]*{OPTIONS_LABEL[:-1]}[ \t]*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class QuestionConfig:
    """How questions are elicited (shared by :class:`arte.elicit.ElicitConfig` and
    :class:`arte.tailor.TailorConfig`).

    Args:
        n_questions: accepted questions wanted (the paper: 250 per task).
        questions_per_prompt: new questions each prompt asks for (the paper: 5).
        n_seeds: seed examples shown per prompt (the paper: 3); stratified by label and rotated across
            prompts when more are given (:func:`draw_seeds`).
        question_temperature, top_p: sampling of question prompts (the paper: T = 1.0).
        question_max_new_tokens: reply budget per question prompt.
        min_question_chars, max_question_chars: length bounds of an accepted question.
        max_question_prompts: give up after this many prompts (None: 4 × the prompts needed).
        batch_size: conversations per teacher call (the backend decodes them together).
        seed: base of every sampling seed and of the seed-example draws.
        id_prefix: prepended to question and draft ids (e.g. a round id).
        constrain: decode the teacher's replies inside the draft formats (:mod:`arte.formats`).
    """

    n_questions: int = 250
    questions_per_prompt: int = 5
    n_seeds: int = 3
    question_temperature: float = 1.0
    top_p: float = 1.0
    question_max_new_tokens: int = 512
    min_question_chars: int = 10
    max_question_chars: int = 1000
    max_question_prompts: int | None = None
    batch_size: int = 16
    seed: int = 0
    id_prefix: str = ""
    constrain: bool = True

    def __post_init__(self) -> None:
        for name in ("n_questions", "questions_per_prompt", "n_seeds", "question_max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {v!r}")
        if not 0.0 <= self.question_temperature <= 10.0:
            raise ConfigError("question_temperature", f"must be in [0, 10], got {self.question_temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_question_chars <= self.max_question_chars:
            raise ConfigError("max_question_chars", f"need 0 <= min_question_chars <= max_question_chars, got "
                                                    f"{self.min_question_chars} and {self.max_question_chars}")
        if self.max_question_prompts is not None and self.max_question_prompts < 1:
            raise ConfigError("max_question_prompts", f"must be >= 1 or None, got {self.max_question_prompts}")

    @property
    def prompt_limit(self) -> int:
        if self.max_question_prompts is not None:
            return self.max_question_prompts
        return 4 * math.ceil(self.n_questions / self.questions_per_prompt)

    def question_sampling(self) -> dict[str, Any]:
        return {"temperature": self.question_temperature, "top_p": self.top_p,
                "max_new_tokens": self.question_max_new_tokens}


@dataclass(frozen=True)
class Question:
    """An accepted question and where it came from."""

    id: str
    text: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuestionResult:
    """Accepted questions, rejections by reason, repairs by kind, how many prompts it took and how many
    of them gave at least one accepted question, and what the constraint did (:mod:`arte.constrain`)."""

    questions: list[Question]
    rejections: dict[str, int]
    repairs: dict[str, int]
    prompts: int
    shortfall: int
    productive_prompts: int = 0
    constraint: dict[str, int] = field(default_factory=dict)


def normalize_question(text: str) -> str:
    """The form used to find duplicates: NFKC, case-folded, only letters and digits, single spaces."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", t).split())


def parse_options(question: str) -> tuple[str, ...] | None:
    """The options listed on the question's last ``Options:`` line (split at ", "), or None."""
    found = _OPTIONS.findall(question)
    if not found:
        return None
    return tuple(o.strip() for o in found[-1].split(", ") if o.strip())


def split_questions(text: str) -> tuple[list[str], bool]:
    """Split a teacher reply into raw question blocks; also says whether any question marker was found
    (numbered lines count when no ``Question N:`` marker exists)."""
    matches = list(_MARKER.finditer(text)) or list(_NUMBERED.finditer(text))
    if not matches:
        return [], False
    blocks = [text[m.end():(matches[i + 1].start() if i + 1 < len(matches) else len(text))]
              for i, m in enumerate(matches)]
    return blocks, True


class QuestionFilter:
    """Cleans and checks question blocks for one task; remembers what it accepted (for duplicates)."""

    def __init__(self, task: Task, seeds: Sequence[Example], config: QuestionConfig) -> None:
        self.config = config
        self.multiple_choice = bool(seeds) and all(e.is_multiple_choice for e in seeds)
        self.fixed_options = shared_options(seeds)
        seed_texts = [seed_question(task, e) for e in seeds]
        self.cut_at_blank = not any("\n\n" in t.strip() for t in seed_texts)
        self.seen_seeds = {normalize_question(t) for t in seed_texts}
        self.seen: set[str] = set()
        self.rejections: dict[str, int] = {}
        self.repairs: dict[str, int] = {}

    def _count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def reject(self, reason: str) -> None:
        self._count(self.rejections, reason)

    def check(self, block: str) -> str | None:
        """The cleaned question, or None (the reason is counted)."""
        q = block.strip()
        m = _ANSWER.search(q)
        if m is not None:
            q = q[:m.start()].strip()
            self._count(self.repairs, "answer_removed")
        if self.cut_at_blank and "\n\n" in q:
            q = q[:q.index("\n\n")].strip()
            self._count(self.repairs, "trailing_text_removed")
        q = q.strip().strip("*_").strip()
        if not q:
            self.reject("empty")
            return None
        if self.multiple_choice:
            q = self._options(q)
            if q is None:
                return None
        stem = q[:_OPTIONS.search(q).start()] if self.multiple_choice else q   # the options do not count
        if len(stem.strip()) < self.config.min_question_chars:
            self.reject("too_short")
            return None
        if len(q) > self.config.max_question_chars:
            self.reject("too_long")
            return None
        key = normalize_question(q)
        if key in self.seen_seeds:
            self.reject("duplicate_of_seed")
            return None
        if key in self.seen:
            self.reject("duplicate")
            return None
        self.seen.add(key)
        return q

    def _options(self, q: str) -> str | None:
        opts = parse_options(q)
        if opts is None:
            if self.fixed_options is None:
                self.reject("no_options")
                return None
            self._count(self.repairs, "options_added")
            return f"{q}\n{OPTIONS_LABEL} {', '.join(self.fixed_options)}"
        if len(opts) < 2 or len({normalize_question(o) for o in opts}) != len(opts):
            self.reject("bad_options")
            return None
        if self.fixed_options is not None and {normalize_question(o) for o in opts} != {
                normalize_question(o) for o in self.fixed_options}:
            self.reject("options_differ_from_task")
            return None
        # Keep the question up to the end of its options line.
        last = list(_OPTIONS.finditer(q))[-1]
        if q[last.end():].strip():
            self._count(self.repairs, "trailing_text_removed")
        return q[:last.end()].strip()


def draw_seeds(seeds: Sequence[Example], k: int, seed: int, index: int) -> list[Example]:
    """The ``k`` seeds shown in prompt ``index``: stratified by label, rotating across prompts (see the
    module docstring); deterministic for ``seed``. All of them, in a per-prompt order, when
    ``len(seeds) <= k``."""
    order = random.Random(seed * 1_000_003 + index)
    if len(seeds) <= k:
        shown = list(seeds)
        order.shuffle(shown)
        return shown
    rng = random.Random(seed)
    groups: dict[str, list[Example]] = {}
    for e in seeds:
        groups.setdefault(normalize_answer(e.answer), []).append(e)
    labels = sorted(groups)
    rng.shuffle(labels)
    for label in labels:
        rng.shuffle(groups[label])
    shown = []
    slot = index * k
    # Slot s takes label s mod L, that label's (s div L)-th seed in turn; a seed already shown (a label
    # with fewer seeds than its turns) is skipped. Ends within k·|seeds| slots: by then every seed came up.
    while len(shown) < k and slot < (index + 1) * k * len(seeds):
        label = labels[slot % len(labels)]
        group = groups[label]
        e = group[(slot // len(labels)) % len(group)]
        if e not in shown:
            shown.append(e)
        slot += 1
    order.shuffle(shown)
    return shown


def generate_questions(teacher: Teacher, task: Task, seeds: Sequence[Example], config: QuestionConfig,
                       progress: Progress | None = None, *, stage: str = "questions") -> QuestionResult:
    """Elicit up to ``config.n_questions`` accepted questions (see the module docstring)."""
    if not seeds:
        raise ConfigError("seeds", "at least one seed example is needed to prompt for questions")
    filt = QuestionFilter(task, seeds, config)
    questions: list[Question] = []
    sampling = config.question_sampling()
    fmt = (question_format(task, seeds, config.questions_per_prompt, min_chars=config.min_question_chars,
                           max_chars=config.max_question_chars) if config.constrain else None)
    counts: dict[str, int] = {}
    productive: set[str] = set()
    sent = 0
    limit = config.prompt_limit
    report(progress, stage, 0, config.n_questions)
    while len(questions) < config.n_questions and sent < limit:
        missing = config.n_questions - len(questions)
        # Prompts for what is missing at the yield seen so far (at first: every question accepted), so a
        # weak teacher's rejections are made up in one parallel call rather than many small ones.
        per_prompt = len(questions) / sent if sent else config.questions_per_prompt
        n_prompts = min(config.batch_size, limit - sent, math.ceil(missing / max(per_prompt, 0.5)))
        draws = [draw_seeds(seeds, config.n_seeds, config.seed, sent + i) for i in range(n_prompts)]
        convs = [question_prompt(task, d, config.questions_per_prompt) for d in draws]
        call_seed = config.seed + sent
        constraint = {"formats": [fmt] * len(convs), "counts": counts} if fmt is not None else {}
        replies = teacher.chat(convs, temperature=config.question_temperature, top_p=config.top_p,
                               max_new_tokens=config.question_max_new_tokens, seed=call_seed, **constraint)
        for i, (reply, drawn) in enumerate(zip(replies, draws)):
            prompt_id = f"qp{sent + i:04d}"
            if not reply.strip():
                filt.reject("empty_reply")
                continue
            blocks, marked = split_questions(reply)
            if not marked:
                filt.reject("no_question_marker")
                continue
            for block in blocks:
                text = filt.check(block)
                if text is None or len(questions) >= config.n_questions:
                    continue
                qid = f"{config.id_prefix}q{len(questions):04d}"
                productive.add(prompt_id)
                prov = {**teacher_id(teacher), "question_prompt": prompt_id,
                        "seed_examples": [e.id for e in drawn],
                        "question_sampling": {**sampling, "seed": call_seed, "index": i}}
                questions.append(Question(qid, text, prov))
        sent += n_prompts
        report(progress, stage, len(questions), config.n_questions)
    shortfall = config.n_questions - len(questions)
    if shortfall:
        log.warning("%s: %d of %d questions after %d prompts (limit reached); rejections: %s", task.name,
                    len(questions), config.n_questions, sent, filt.rejections)
    return QuestionResult(questions, dict(filt.rejections), dict(filt.repairs), sent, shortfall,
                          len(productive), counts)
