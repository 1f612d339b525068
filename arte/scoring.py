"""Scoring engine: each draft's one-shot in-context accuracy of a student on labelled items.

Contract: ``score_drafts(student, task, drafts, items, config)`` returns, per draft, ``n_items`` and
``n_correct`` (what a device may report) and the draft × item outcome matrix (which stays on the device:
item selection uses it locally). The engine knows prompts and answers, not runtimes: it talks to any
:class:`arte.student.Student`.

Modes (:data:`MODES`, defined here once and imported by every schema and CLI). The two reasoning modes
are the paper's: the item segment ends in "Answer: Let's think step by step." and the student writes its
own reasoning (greedy), so the demonstration's rationale acts on the answer through the student's reasoning.

* ``cot-choice`` (the default): the student reasons until it writes ``<ans>`` (or a new
  "\nQuestion:", or the end of its turn, or ``max_new_tokens``: then ``<ans>`` is appended). On a
  multiple-choice item, each option is then scored as the continuation ``{option}</ans>`` after the
  reasoning and ``<ans>``, and the option with the highest log-probability (normalized by
  ``length_norm``, as in ``loglik``) is its answer: it cannot fail to parse. On an exact-match item (no
  options) it continues to ``</ans>`` and is matched exactly, as in ``generate``, so one mode serves every
  task.
* ``generate``: the student continues greedily until ``</ans>``; the answer inside the tag is compared to
  the item's targets by normalized exact match (a reasoning that never closes the tag is wrong).
* ``loglik`` (multiple choice only; a cheap mode that **ignores the rationale's reasoning**): the item
  segment ends in ``Answer: <ans>``, right after the demonstration, and each option is scored as
  ``{option}</ans>``. The student never reasons, so a draft's score mostly measures how its answer label
  shifts the student's prior. Option normalization ``length_norm``: ``bytes`` (default: log-probability
  per UTF-8 byte of the continuation, lm-eval-harness's ``acc_norm``), ``tokens``, or ``none`` (the sum).
  Ties go to the earlier option.

Work is never repeated: items and options are tokenized once; calls go draft by draft, so the student
evaluates each draft's demonstration prefix once and reuses its KV state for every item, and each item's
prompt once across its options (see :mod:`arte.student`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from arte.answers import ANS_CLOSE, ANS_OPEN, is_correct, parse_answer
from arte.drafts import Draft
from arte.errors import ConfigError, ScoringError
from arte.prompts import option_continuation, scoring_item, scoring_prefix
from arte.student import Student
from arte.tasks import Example, Task

__all__ = ["MODES", "DEFAULT_MODE", "REASONING_MODES", "MODE_HELP", "ScoringConfig", "DraftScore", "ScoreResult", "score_drafts",
           "check_items", "option_norms", "choose_option", "GENERATE_STOP", "REASONING_STOP"]

MODES = ("cot-choice", "generate", "loglik")
DEFAULT_MODE = "cot-choice"
REASONING_MODES = ("cot-choice", "generate")
MODE_HELP = ("cot-choice: the student reasons, then its answer is the likeliest option (items without options: "
             "exact match, as generate); generate: the student reasons and writes its answer (exact match); "
             "loglik: answer-first option log-probability, cheap but it ignores the rationale's reasoning "
             "(multiple choice only).")
LENGTH_NORMS = ("bytes", "tokens", "none")
# Reasoning ends where a small student starts inventing the next question.
REASONING_STOP = ("\nQuestion:",)
# Generation ends at the closing tag, or at REASONING_STOP.
GENERATE_STOP = (ANS_CLOSE, *REASONING_STOP)


@dataclass(frozen=True)
class ScoringConfig:
    """How drafts are scored.

    Args:
        mode: one of :data:`MODES` (see the module docstring): ``cot-choice`` (default: the student
            reasons, then the likeliest option), ``generate`` (the student reasons and writes its answer;
            exact match) or ``loglik`` (answer-first, ignores the rationale's reasoning; cheap).
        max_new_tokens: generation budget per item in the reasoning modes; in ``cot-choice`` it is the
            reasoning budget, after which ``<ans>`` is appended and the options are scored.
        length_norm: option normalization in ``cot-choice`` and ``loglik``: ``bytes``, ``tokens`` or ``none``.
    """

    mode: str = DEFAULT_MODE
    max_new_tokens: int = 96
    length_norm: str = "bytes"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.length_norm not in LENGTH_NORMS:
            raise ConfigError("length_norm", f"must be one of {', '.join(LENGTH_NORMS)}, got {self.length_norm!r}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ConfigError("max_new_tokens", f"must be in [1, 4096], got {self.max_new_tokens}")


@dataclass(frozen=True)
class DraftScore:
    """What one draft scored: the only numbers a device reports."""

    draft_id: str
    n_items: int
    n_correct: int

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_items if self.n_items else float("nan")


@dataclass
class ScoreResult:
    """Scores per draft, plus the draft × item outcome matrix (1 correct, 0 wrong) kept on the device."""

    scores: list[DraftScore]
    item_ids: list[str]
    outcomes: np.ndarray
    mode: str
    complete: bool = True
    stats: dict[str, float] = field(default_factory=dict)


def check_items(items: Sequence[Example], mode: str) -> None:
    """Raise :class:`ScoringError` if ``items`` cannot be scored in ``mode`` (call before loading a model)."""
    if not items:
        raise ScoringError("no validation items to score on")
    if mode == "loglik":
        bad = [e.id for e in items if not e.is_multiple_choice]
        if bad:
            raise ScoringError(f"loglik mode needs multiple-choice items, but {len(bad)} of {len(items)} "
                               f"have no choices (first: {bad[0]!r}); use mode 'cot-choice' or 'generate'")


def option_norms(options: Sequence[str], tokens: Sequence[Sequence[int]], length_norm: str) -> np.ndarray:
    """What each option's log-probability is divided by: its continuation's UTF-8 bytes, its tokens, or 1."""
    if length_norm == "bytes":
        return np.array([len(option_continuation(c).encode("utf-8")) for c in options], dtype=np.float64)
    if length_norm == "tokens":
        return np.array([len(t) for t in tokens], dtype=np.float64)
    return np.ones(len(options))


def choose_option(logprobs: Sequence[float], norms: np.ndarray) -> int:
    """Index of the option with the highest normalized log-probability (ties: the earlier option)."""
    return int(np.argmax(np.asarray(logprobs, dtype=np.float64) / norms))


def score_drafts(student: Student, task: Task, drafts: Sequence[Draft], items: Sequence[Example],
                 config: ScoringConfig = ScoringConfig(), *,
                 progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> ScoreResult:
    """Score every draft on every item. ``progress(n)`` is called with the number of items just scored;
    ``should_stop()`` is checked between drafts (a device's time budget): drafts not reached are left out
    of ``scores`` and ``complete`` is False."""
    check_items(items, config.mode)
    t0 = time.perf_counter()
    mode = config.mode
    item_toks = [student.tokenize(scoring_item(task, e, mode)) for e in items]
    # Items answered by choosing an option (loglik; cot-choice on multiple choice) and by exact match.
    chosen = [j for j, e in enumerate(items) if mode != "generate" and e.is_multiple_choice]
    matched = [j for j, e in enumerate(items) if mode == "generate" or not e.is_multiple_choice]
    opt_toks = {j: [student.tokenize(option_continuation(c)) for c in items[j].choices] for j in chosen}
    norms = {j: option_norms(items[j].choices, opt_toks[j], config.length_norm) for j in chosen}
    outcomes = np.zeros((len(drafts), len(items)), dtype=np.int8)
    scores: list[DraftScore] = []
    for d_i, draft in enumerate(drafts):
        if should_stop is not None and should_stop():
            break
        prefix = student.tokenize(scoring_prefix(task, draft), bos=True)
        logprobs: list[list[float]] = []
        if chosen and mode == "loglik":
            logprobs = [[r.logprob for r in res] for res in
                        student.loglik_batch([(prefix + item_toks[j], opt_toks[j]) for j in chosen])]
        elif chosen:
            logprobs = [[r.logprob for r in res.continuations] for res in
                        student.reason_loglik([prefix + item_toks[j] for j in chosen], [opt_toks[j] for j in chosen],
                                              cue=ANS_OPEN, max_new_tokens=config.max_new_tokens,
                                              stop=REASONING_STOP)]
        for j, lp in zip(chosen, logprobs):
            outcomes[d_i, j] = items[j].choices[choose_option(lp, norms[j])] in items[j].targets
        if matched:
            gens = student.generate([prefix + item_toks[j] for j in matched], max_new_tokens=config.max_new_tokens,
                                    stop=GENERATE_STOP)
            for j, g in zip(matched, gens):
                text = g.text + ANS_CLOSE if g.stop == ANS_CLOSE else g.text
                outcomes[d_i, j] = is_correct(parse_answer(text), items[j].targets)
        scores.append(DraftScore(draft.id, len(items), int(outcomes[d_i].sum())))
        if progress is not None:
            progress(len(items))
    n = len(scores)
    return ScoreResult(scores=scores, item_ids=[e.id for e in items], outcomes=outcomes[:n],
                       mode=mode, complete=n == len(drafts),
                       stats={"seconds": time.perf_counter() - t0, "drafts": n, "items": len(items)})
