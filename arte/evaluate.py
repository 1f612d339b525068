"""Before/after evaluation on the device's holdout, and the rule that keeps an adapter only if it helps.

Contract: ``evaluate(student, fmt, task, items, demos, config)`` returns, per shot count, the per-item
outcomes (1 correct, 0 wrong) of any :class:`arte.student.Student` in the training format
(:mod:`arte.sft_data`): k-shot puts the first k of ``demos`` (solved records) before the question as
earlier turns of the conversation.

Demonstrations (:func:`split_demos`): k label-balanced items taken out of the holdout, with a templated
rationale (:func:`arte.sft_data.templated_records`), the same for every condition. They come from a pool
no condition trains on and none was made from: not the training records (an adapter would be judged on
its own training data), not the seed examples the teacher saw (its data copy them). Balanced because a
small student copies the demonstrations' answer: with three demonstrations of one label, every
condition's 3-shot answers would be that label.

The modes are scoring's (:data:`arte.scoring.MODES`). In the reasoning modes the assistant turn starts
with "Let's think step by step." (as in training) and the student continues greedily:

* ``cot-choice`` (default): until it writes ``<ans>`` (or ends its turn, or reaches ``max_new_tokens``:
  then ``<ans>`` is appended); on a multiple-choice item the option whose ``{option}</ans>`` then has the
  highest log-probability per UTF-8 byte is its answer (it cannot fail to parse); an exact-match item
  continues to ``</ans>`` and is matched exactly, as in ``generate``;
* ``generate``: until ``</ans>`` or the end of its turn; the text inside ``<ans>…</ans>`` is compared with
  the item's targets by normalized exact match (:func:`arte.answers.is_correct`);
* ``loglik`` (multiple choice only; cheap, and it skips the reasoning the student was trained to write): the
  assistant turn starts with ``<ans>``; the likeliest ``{option}</ans>`` per UTF-8 byte is the answer.

``keep_if_better(old, new)`` is the deployment rule on paired outcomes of the same items: the one-sided
exact McNemar test on the discordant items. With ``wins`` items only the new adapter gets right and
``losses`` items only the old one gets right, ``p = P(X >= wins)`` for ``X ~ Binomial(wins + losses, 1/2)``
(the chance of doing this well if both were equally good). The new adapter is kept only if its accuracy
gain exceeds ``min_gain`` **and** ``p <= alpha`` (default 0.05). Examples at alpha 0.05: 5 wins and 0
losses pass (p 0.031); 8 wins and 2 losses do not (p 0.055); 9 and 1 do (p 0.011). A small holdout can
therefore only approve a clear improvement; that is the point: noise must not replace a working adapter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from arte.answers import ANS_CLOSE, ANS_OPEN, is_correct, parse_answer
from arte.drafts import Draft
from arte.errors import ConfigError, ScoringError
from arte.scoring import DEFAULT_MODE, MODES, choose_option, option_norms
from arte.sft_data import ChatFormat, templated_records
from arte.student import Student
from arte.tasks import Example, Task, balanced_order, format_question

__all__ = ["EvalConfig", "EvalResult", "Decision", "evaluate", "keep_if_better", "mcnemar_p", "pick_demos",
           "split_demos"]


@dataclass(frozen=True)
class EvalConfig:
    """How the holdout is evaluated and how the keep rule decides.

    Args:
        mode: one of :data:`arte.scoring.MODES`: ``cot-choice`` (default: reasoning, then the likeliest
            option), ``generate`` (reasoning, exact match on the generated ``<ans>``) or ``loglik``
            (answer-first, multiple choice only, ignores reasoning).
        shots: the shot counts to evaluate (each a separate pass over the items).
        decide_on: the shot count whose outcomes the keep rule uses (must be in ``shots``).
        max_new_tokens: generation budget per item (in ``cot-choice``: the reasoning budget).
        alpha: significance level of the one-sided exact McNemar test.
        min_gain: accuracy gain (fraction) the new adapter must exceed, besides significance.
    """

    mode: str = DEFAULT_MODE
    shots: tuple[int, ...] = (0, 3)
    decide_on: int = 0
    max_new_tokens: int = 128
    alpha: float = 0.05
    min_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.shots or any(k < 0 for k in self.shots) or len(set(self.shots)) != len(self.shots):
            raise ConfigError("shots", f"must be distinct counts >= 0, got {self.shots!r}")
        if self.decide_on not in self.shots:
            raise ConfigError("decide_on", f"must be one of shots {self.shots}, got {self.decide_on}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ConfigError("max_new_tokens", f"must be in [1, 4096], got {self.max_new_tokens}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError("alpha", f"must be in (0, 1), got {self.alpha}")
        if not 0.0 <= self.min_gain < 1.0:
            raise ConfigError("min_gain", f"must be in [0, 1), got {self.min_gain}")


@dataclass
class EvalResult:
    """Outcomes of one pass (one shot count) over the holdout items."""

    shots: int
    item_ids: list[str]
    outcomes: list[int]
    answers: list[str | None]
    seconds: float

    @property
    def accuracy(self) -> float:
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else float("nan")

    def summary(self) -> dict[str, float | int]:
        return {"shots": self.shots, "n_items": len(self.outcomes), "n_correct": sum(self.outcomes),
                "accuracy": round(self.accuracy, 4), "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class Decision:
    """The keep-if-better verdict and its evidence."""

    keep: bool
    reason: str
    n_items: int
    accuracy_old: float
    accuracy_new: float
    wins: int
    losses: int
    p_value: float
    alpha: float
    min_gain: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        return self.accuracy_new - self.accuracy_old


def pick_demos(pool: Sequence[Example], k: int, *, seed: int = 0) -> list[Example]:
    """k label-balanced demonstration items from ``pool`` (:func:`arte.tasks.balanced_order`: labels take
    turns), deterministic for ``seed`` and independent of the pool's order."""
    if k < 0:
        raise ConfigError("shots", f"must be >= 0, got {k}")
    return balanced_order(pool, seed, salt="demos")[:k]


def split_demos(task: Task, holdout: Sequence[Example], k: int, *, seed: int = 0
                ) -> tuple[list[Draft], list[Example]]:
    """The k-shot demonstrations and the items to evaluate, both from ``holdout``: :func:`pick_demos` takes
    k items, which become solved records with a templated rationale and are never evaluated; the rest keep
    their order. Raises :class:`ConfigError` when the holdout has no item left to evaluate."""
    chosen = pick_demos(holdout, k, seed=seed)
    if len(chosen) < k or len(holdout) <= k:
        raise ConfigError("shots", f"{k}-shot evaluation takes {k} demonstrations out of the holdout, which has "
                                   f"{len(holdout)} items; at least {k + 1} are needed")
    taken = {e.id for e in chosen}
    return templated_records(task, chosen), [e for e in holdout if e.id not in taken]


def evaluate(student: Student, fmt: ChatFormat, task: Task, items: Sequence[Example], demos: Sequence[Draft],
             config: EvalConfig = EvalConfig(), *, progress: Callable[[int], None] | None = None
             ) -> dict[int, EvalResult]:
    """Accuracy of ``student`` on ``items`` for each of ``config.shots``; see the module docstring."""
    if not items:
        raise ScoringError("no holdout items to evaluate on")
    if max(config.shots) > len(demos):
        raise ConfigError("shots", f"{max(config.shots)}-shot evaluation needs that many demonstrations, "
                                   f"got {len(demos)}")
    if config.mode == "loglik":
        bad = [e.id for e in items if not e.is_multiple_choice]
        if bad:
            raise ScoringError(f"loglik evaluation needs multiple-choice items; {len(bad)} have no choices "
                               f"(first: {bad[0]!r}); use mode 'cot-choice' or 'generate'")
    questions = [format_question(task, e) for e in items]
    # Items answered by choosing an option, and by exact match (see the module docstring).
    chosen = [j for j, e in enumerate(items) if config.mode != "generate" and e.is_multiple_choice]
    matched = [j for j, e in enumerate(items) if config.mode == "generate" or not e.is_multiple_choice]
    opt_toks = {j: [fmt.encode(f"{c}{ANS_CLOSE}") for c in items[j].choices] for j in chosen}
    norms = {j: option_norms(items[j].choices, opt_toks[j], "bytes") for j in chosen}
    results: dict[int, EvalResult] = {}
    for k in config.shots:
        t0 = time.perf_counter()
        shown = list(demos[:k])
        answers: list[str | None] = [None] * len(items)
        outcomes = [0] * len(items)
        logprobs: list[list[float]] = []
        if config.mode == "loglik" and chosen:
            res = student.loglik_batch([(fmt.answer_prompt(questions[j], shown), opt_toks[j]) for j in chosen])
            logprobs = [[r.logprob for r in conts] for conts in res]
        elif chosen:
            res = student.reason_loglik([fmt.eval_prompt(questions[j], shown) for j in chosen],
                                        [opt_toks[j] for j in chosen], cue=ANS_OPEN,
                                        max_new_tokens=config.max_new_tokens)
            logprobs = [[r.logprob for r in x.continuations] for x in res]
        for j, lp in zip(chosen, logprobs):
            answers[j] = items[j].choices[choose_option(lp, norms[j])]
            outcomes[j] = int(answers[j] in items[j].targets)
        if matched:
            gens = student.generate([fmt.eval_prompt(questions[j], shown) for j in matched],
                                    max_new_tokens=config.max_new_tokens, stop=(ANS_CLOSE,))
            for j, g in zip(matched, gens):
                answers[j] = parse_answer(g.text + ANS_CLOSE if g.stop == ANS_CLOSE else g.text)
                outcomes[j] = int(is_correct(answers[j], items[j].targets))
        results[k] = EvalResult(k, [e.id for e in items], outcomes, answers, time.perf_counter() - t0)
        if progress is not None:
            progress(len(items))
    return results


def mcnemar_p(wins: int, losses: int) -> float:
    """One-sided exact McNemar p-value: P(X >= wins), X ~ Binomial(wins + losses, 1/2); 1.0 if no item
    differs."""
    n = wins + losses
    if n == 0:
        return 1.0
    return math.fsum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n


def keep_if_better(old: Sequence[int], new: Sequence[int], *, alpha: float = 0.05,
                   min_gain: float = 0.0) -> Decision:
    """Whether the new adapter (outcomes ``new``) should replace the current one (``old``), on paired
    per-item outcomes of the same items; see the module docstring."""
    if len(old) != len(new):
        raise ConfigError("outcomes", f"paired outcomes must cover the same items ({len(old)} vs {len(new)})")
    if not old:
        raise ConfigError("outcomes", "no items to compare")
    wins = sum(1 for a, b in zip(old, new) if b and not a)
    losses = sum(1 for a, b in zip(old, new) if a and not b)
    n = len(old)
    acc_old, acc_new = sum(map(bool, old)) / n, sum(map(bool, new)) / n
    p = mcnemar_p(wins, losses)
    gain = acc_new - acc_old
    if gain <= min_gain:
        keep, reason = False, (f"no gain beyond {min_gain:.3f}: accuracy {acc_old:.3f} -> {acc_new:.3f} "
                               f"({wins} items won, {losses} lost)")
    elif p > alpha:
        keep, reason = False, (f"gain {gain:+.3f} is within noise: {wins} won vs {losses} lost, "
                               f"McNemar p={p:.3g} > {alpha}")
    else:
        keep, reason = True, f"gain {gain:+.3f}: {wins} won vs {losses} lost, McNemar p={p:.3g} <= {alpha}"
    return Decision(keep, reason, n, acc_old, acc_new, wins, losses, p, alpha, min_gain)
