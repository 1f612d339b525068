"""Planted preferences: a stand-in for the students whose preference we know, to test the alignment path.

Contract: a :class:`PlantedRule` declares a property of a draft (:data:`RULES`) and how strongly the
planted "students" prefer it; :func:`planted_scores` scores drafts with it and returns the same
:class:`arte.scoring.ScoreResult` a real student's :func:`arte.scoring.score_drafts` returns (per draft
``n_items`` and ``n_correct``, the draft × item outcome matrix, item ids), so everything after it is the
real code: :func:`arte.pipeline.write_scores` / :func:`arte.privacy.report_scores` (a device report, with
or without local DP), the server's aggregation, :func:`arte.pairs.select_pairs`, DPO, tailoring.

Scores. Each draft's items are independent Bernoulli draws at the draft's rate (so ``n_correct`` is
binomial): ``high = base + strength / 2`` when the rule holds, ``low = base - strength / 2`` when it does
not (variant ``planted``); the two are swapped for ``reversed``; every draft gets ``base`` for ``null``
(random scores: any pair it makes is noise). ``noise`` adds a per-draft normal jitter (sd ``noise``) to the
rate before the draws (students disagree about drafts for reasons unrelated to the rule); rates are
clipped to [0, 1]. Every draft is scored on the same ``n_items`` items (ids ``planted-0`` …), like a
student scoring all drafts of a round on its validation items.

Rules (each reads the question and/or the rationale of a draft; :attr:`PlantedRule.target` says which
text the measurement samples):

* ``short`` (rationale): at most ``max_words`` words before the answer tag.
* ``steps`` (rationale): a numbered-steps layout: at least two lines that start with ``1.``, ``2)``,
  ``Step 3:`` and the like.
* ``answer_early`` (rationale): the ``<ans>`` tag opens within the first ``answer_chars`` characters.
* ``quantity`` (question): the question names a quantity (contains a digit).

Pure: numbers in, numbers out; every random draw comes from the given ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from arte.answers import ANS_OPEN
from arte.drafts import Draft
from arte.errors import ConfigError
from arte.scoring import DraftScore, ScoreResult

__all__ = ["RULES", "VARIANTS", "TARGETS", "MODE", "PlantedRule", "holds", "draft_holds", "planted_scores", "rule_rate"]

RULES = ("short", "steps", "answer_early", "quantity")
VARIANTS = ("planted", "reversed", "null")
TARGETS = {"short": "rationale", "steps": "rationale", "answer_early": "rationale", "quantity": "question"}
MODE = "planted"   # the scoring mode recorded in scores files and reports of planted scores

_STEP_LINE = re.compile(r"^\s*(?:step\s*)?\d{1,2}\s*[.):]", re.IGNORECASE | re.MULTILINE)
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class PlantedRule:
    """A declared preference and its strength.

    Args:
        rule: the property (:data:`RULES`).
        variant: ``planted`` (drafts with the property score higher), ``reversed`` (lower) or ``null``
            (every draft at ``base``: random scores).
        strength: rate when the property holds minus rate when it does not, in (0, 1].
        base: mean of the two rates.
        noise: sd of a per-draft normal jitter of the rate (0: none).
        max_words: ``short``: the largest rationale, in words before the answer tag, that counts as short.
        answer_chars: ``answer_early``: the tag must open before this many characters.
    """

    rule: str = "short"
    variant: str = "planted"
    strength: float = 0.6
    base: float = 0.5
    noise: float = 0.0
    max_words: int = 40
    answer_chars: int = 200

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError("rule", f"must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.variant not in VARIANTS:
            raise ConfigError("variant", f"must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not 0.0 < self.strength <= 1.0:
            raise ConfigError("strength", f"must be in (0, 1], got {self.strength}")
        if not (self.strength / 2 <= self.base <= 1.0 - self.strength / 2):
            raise ConfigError("base", f"base ± strength/2 must stay in [0, 1], got base {self.base} with "
                                      f"strength {self.strength}")
        if not (0.0 <= self.noise < 1.0) or not math.isfinite(self.noise):
            raise ConfigError("noise", f"must be in [0, 1), got {self.noise}")
        for name in ("max_words", "answer_chars"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {v!r}")

    @property
    def name(self) -> str:
        """``short``, ``short-reversed``, ``short-null``."""
        return self.rule if self.variant == "planted" else f"{self.rule}-{self.variant}"

    @property
    def target(self) -> str:
        """Which text of a draft the rule reads: ``rationale`` or ``question``."""
        return TARGETS[self.rule]

    def rate(self, has_property: bool) -> float:
        """The per-item success rate of a draft with / without the property."""
        high, low = self.base + self.strength / 2, self.base - self.strength / 2
        if self.variant == "null":
            return self.base
        if self.variant == "reversed":
            high, low = low, high
        return high if has_property else low

    def describe(self) -> str:
        what = {"short": f"rationale of at most {self.max_words} words",
                "steps": "numbered-steps rationale", "answer_early": f"answer tag in the first {self.answer_chars} "
                                                                      f"characters",
                "quantity": "question names a quantity (a digit)"}[self.rule]
        return f"{what} ({self.variant}: rate {self.rate(True):.2f} with, {self.rate(False):.2f} without)"


def _body(rationale: str) -> str:
    at = rationale.find(ANS_OPEN)
    return rationale if at < 0 else rationale[:at]


def holds(rule: PlantedRule, text: str) -> bool:
    """Whether ``text`` (a rationale, or a question for ``quantity``: :attr:`PlantedRule.target`) has the
    rule's property."""
    if rule.rule == "short":
        return len(_body(text).split()) <= rule.max_words
    if rule.rule == "steps":
        return len(_STEP_LINE.findall(text)) >= 2
    if rule.rule == "answer_early":
        at = text.find(ANS_OPEN)
        return 0 <= at < rule.answer_chars
    return _DIGIT.search(text) is not None


def draft_holds(rule: PlantedRule, draft: Draft) -> bool:
    """:func:`holds` on the draft's text that the rule reads."""
    return holds(rule, draft.question if rule.target == "question" else draft.rationale)


def rule_rate(rule: PlantedRule, texts: Sequence[str]) -> float:
    """Share of ``texts`` with the property (nan when there are none)."""
    return sum(holds(rule, t) for t in texts) / len(texts) if texts else float("nan")


def planted_scores(drafts: Sequence[Draft], rule: PlantedRule, n_items: int,
                   rng: np.random.Generator) -> ScoreResult:
    """Score ``drafts`` with the planted rule on ``n_items`` items (see the module docstring)."""
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ConfigError("n_items", f"must be an integer >= 1, got {n_items!r}")
    rates = np.array([rule.rate(draft_holds(rule, d)) for d in drafts], dtype=float)
    if rule.noise > 0 and len(rates):
        rates = rates + rng.normal(0.0, rule.noise, size=len(rates))
    rates = np.clip(rates, 0.0, 1.0)
    outcomes = (rng.random((len(drafts), n_items)) < rates[:, None]).astype(np.int8)
    scores = [DraftScore(d.id, n_items, int(row.sum())) for d, row in zip(drafts, outcomes)]
    return ScoreResult(scores, [f"planted-{i}" for i in range(n_items)], outcomes, MODE,
                       stats={"drafts": float(len(drafts)), "holds": float(sum(draft_holds(rule, d) for d in drafts))})
