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

* ``generate`` (default, the paper's): the assistant turn starts with "Let's think step by step." and the
  student continues greedily until ``</ans>`` or the end of its turn; the text inside ``<ans>…</ans>`` is
  compared with the item's targets by normalized exact match (:func:`arte.answers.is_correct`).
* ``loglik`` (multiple choice only): the assistant turn starts with ``<ans>``; the option whose
  ``{option}</ans>`` has the highest log-probability per UTF-8 byte is the answer (as in scoring).

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

import numpy as np

from arte.answers import ANS_CLOSE, is_correct, parse_answer
from arte.drafts import Draft
from arte.errors import ConfigError, ScoringError
from arte.sft_data import ChatFormat, templated_records
from arte.student import Student
from arte.tasks import Example, Task, balanced_order, format_question

__all__ = ["EvalConfig", "EvalResult", "Decision", "evaluate", "keep_if_better", "mcnemar_p", "pick_demos",
           "split_demos"]

MODES = ("generate", "loglik")


@dataclass(frozen=True)
class EvalConfig:
    """How the holdout is evaluated and how the keep rule decides.

    Args:
        mode: ``generate`` (exact match on the generated ``<ans>``) or ``loglik`` (multiple choice).
        shots: the shot counts to evaluate (each a separate pass over the items).
        decide_on: the shot count whose outcomes the keep rule uses (must be in ``shots``).
        max_new_tokens: generation budget per item.
        alpha: significance level of the one-sided exact McNemar test.
        min_gain: accuracy gain (fraction) the new adapter must exceed, besides significance.
    """

    mode: str = "generate"
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
                               f"(first: {bad[0]!r}); use mode 'generate'")
    questions = [format_question(task, e) for e in items]
    results: dict[int, EvalResult] = {}
    for k in config.shots:
        t0 = time.perf_counter()
        shown = list(demos[:k])
        answers: list[str | None] = []
        outcomes: list[int] = []
        if config.mode == "generate":
            prompts = [fmt.eval_prompt(q, shown) for q in questions]
            gens = student.generate(prompts, max_new_tokens=config.max_new_tokens, stop=(ANS_CLOSE,))
            for e, g in zip(items, gens):
                ans = parse_answer(g.text + ANS_CLOSE if g.stop == ANS_CLOSE else g.text)
                answers.append(ans)
                outcomes.append(int(is_correct(ans, e.targets)))
        else:
            requests = []
            for q, e in zip(questions, items):
                conts = [fmt.encode(f"{c}{ANS_CLOSE}") for c in e.choices]
                requests.append((fmt.answer_prompt(q, shown), conts))
            for e, res in zip(items, student.loglik_batch(requests)):
                per_byte = [r.logprob / len(f"{c}{ANS_CLOSE}".encode()) for r, c in zip(res, e.choices)]
                ans = e.choices[int(np.argmax(per_byte))]
                answers.append(ans)
                outcomes.append(int(ans in e.targets))
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
