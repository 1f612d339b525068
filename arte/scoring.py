"""Scoring engine: each draft's one-shot in-context accuracy of a student on labelled items.

Contract: ``score_drafts(student, task, drafts, items, config)`` returns, per draft, ``n_items`` and
``n_correct`` (what a device may report) and the draft × item outcome matrix (which stays on the device:
item selection uses it locally). The engine knows prompts and answers, not runtimes: it talks to any
:class:`arte.student.Student`.

Modes:

* ``generate`` (the paper's): the student continues the one-shot prompt greedily until ``</ans>``; the
  answer inside the tag is compared to the item's targets by normalized exact match.
* ``loglik`` (multiple choice only): each option is scored as the continuation ``{option}</ans>`` after
  ``Answer: <ans>``; the student's choice is the option with the highest log-probability per UTF-8 byte
  of that continuation (``length_norm="bytes"``, lm-eval-harness's ``acc_norm``), so long and short
  options compete on equal terms. ``"tokens"`` divides by the token count, ``"none"`` uses the sum.
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

from arte.answers import ANS_CLOSE, is_correct, parse_answer
from arte.drafts import Draft
from arte.errors import ConfigError, ScoringError
from arte.prompts import option_continuation, scoring_item, scoring_prefix
from arte.student import Student
from arte.tasks import Example, Task

__all__ = ["ScoringConfig", "DraftScore", "ScoreResult", "score_drafts", "check_items", "GENERATE_STOP"]

MODES = ("loglik", "generate")
LENGTH_NORMS = ("bytes", "tokens", "none")
# Generation ends at the closing tag, or where a small student starts inventing the next question.
GENERATE_STOP = (ANS_CLOSE, "\nQuestion:")


@dataclass(frozen=True)
class ScoringConfig:
    """How drafts are scored.

    Args:
        mode: ``loglik`` (multiple-choice items, cheap and steady) or ``generate`` (the paper's).
        max_new_tokens: generation budget per item in ``generate`` mode.
        length_norm: option normalization in ``loglik`` mode: ``bytes``, ``tokens`` or ``none``.
    """

    mode: str = "loglik"
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
                               f"have no choices (first: {bad[0]!r}); use mode 'generate'")


def score_drafts(student: Student, task: Task, drafts: Sequence[Draft], items: Sequence[Example],
                 config: ScoringConfig = ScoringConfig(), *,
                 progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> ScoreResult:
    """Score every draft on every item. ``progress(n)`` is called with the number of items just scored;
    ``should_stop()`` is checked between drafts (a device's time budget): drafts not reached are left out
    of ``scores`` and ``complete`` is False."""
    check_items(items, config.mode)
    t0 = time.perf_counter()
    item_toks = [student.tokenize(scoring_item(task, e, config.mode)) for e in items]
    opt_toks: list[list[list[int]]] = []
    opt_norm: list[np.ndarray] = []
    if config.mode == "loglik":
        for e in items:
            conts = [option_continuation(c) for c in e.choices]
            toks = [student.tokenize(c) for c in conts]
            opt_toks.append(toks)
            if config.length_norm == "bytes":
                opt_norm.append(np.array([len(c.encode("utf-8")) for c in conts], dtype=np.float64))
            elif config.length_norm == "tokens":
                opt_norm.append(np.array([len(t) for t in toks], dtype=np.float64))
            else:
                opt_norm.append(np.ones(len(conts)))
    outcomes = np.zeros((len(drafts), len(items)), dtype=np.int8)
    scores: list[DraftScore] = []
    for d_i, draft in enumerate(drafts):
        if should_stop is not None and should_stop():
            break
        prefix = student.tokenize(scoring_prefix(task, draft), bos=True)
        if config.mode == "loglik":
            batch = student.loglik_batch([(prefix + t, o) for t, o in zip(item_toks, opt_toks)])
            for j, (e, res) in enumerate(zip(items, batch)):
                lp = np.array([r.logprob for r in res]) / opt_norm[j]
                outcomes[d_i, j] = e.choices[int(np.argmax(lp))] in e.targets
        else:
            gens = student.generate([prefix + t for t in item_toks], max_new_tokens=config.max_new_tokens,
                                    stop=GENERATE_STOP)
            for j, (e, g) in enumerate(zip(items, gens)):
                text = g.text + ANS_CLOSE if g.stop == ANS_CLOSE else g.text
                outcomes[d_i, j] = is_correct(parse_answer(text), e.targets)
        scores.append(DraftScore(draft.id, len(items), int(outcomes[d_i].sum())))
        if progress is not None:
            progress(len(items))
    n = len(scores)
    return ScoreResult(scores=scores, item_ids=[e.id for e in items], outcomes=outcomes[:n],
                       mode=config.mode, complete=n == len(drafts),
                       stats={"seconds": time.perf_counter() - t0, "drafts": n, "items": len(items)})
