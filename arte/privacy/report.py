"""Build the scores of a report — and nothing else — from a device's scoring result under its policy.

Contract: ``report_scores(result, policy, accountant=…, round_id=…, rng=…)`` returns the per-draft
``DraftScoreMsg`` list (draft id, ``n_items``, ``n_correct``: noised when the policy says so) and the
``PrivacyInfo`` to put in the :class:`arte.wire.Report`. Order of work, so that a refusal loses nothing
and a crash never releases more than was charged:

1. check the result is consistent (the counts are the outcome matrix's row sums);
2. charge the accountant (raises :class:`arte.errors.PrivacyBudgetExceeded` before any noise is drawn);
3. draw the noise (:func:`arte.privacy.privatize`) from the injected generator;
4. check that only scores leave (:func:`check_scores_only`, raises :class:`arte.errors.ReportContentError`).

The agent then persists the accountant state and the report together and re-sends those same bytes on
retry: building a report twice for a round is a second release and is charged twice.

``policy_for_round`` reconciles the device's own policy with what a round requires: the server may make
a report stricter (smaller ε or δ, another mechanism), never looser.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np

from arte.errors import ConfigError, ReportContentError
from arte.privacy.accounting import Charge, PrivacyAccountant
from arte.privacy.mechanisms import PrivacyPolicy, calibrate, privatize
from arte.scoring import ScoreResult
from arte.wire import DraftScoreMsg, PrivacyInfo

__all__ = ["ReportScores", "report_scores", "check_scores_only", "policy_for_round", "SCORE_FIELDS"]

# The only fields a score may carry. If arte.wire.DraftScoreMsg grows a field, check_scores_only fails
# until someone decides here whether the new field may leave the device.
SCORE_FIELDS = frozenset({"draft_id", "n_items", "n_correct"})


@dataclass(frozen=True)
class ReportScores:
    """What goes into a Report: the scores, the privacy applied, and the charge recorded (None if none)."""

    scores: list[DraftScoreMsg]
    privacy: PrivacyInfo
    charge: Charge | None


def report_scores(result: ScoreResult, policy: PrivacyPolicy, *, accountant: PrivacyAccountant,
                  round_id: str, rng: np.random.Generator,
                  draft_ids: Collection[str] | None = None) -> ReportScores:
    """The scores a device may send for ``round_id``; ``draft_ids`` (the round's drafts) are the only ids
    allowed in the report. See the module docstring for the order of work."""
    outcomes = _check_result(result)
    cal = calibrate(policy.mechanism, policy.epsilon, policy.delta, len(result.scores))
    charge = None
    if policy.mechanism != "none":
        charge = accountant.charge(round_id, cal, total_epsilon=policy.total_epsilon,
                                   total_delta=policy.total_delta)
    counts = privatize(outcomes, cal, rng)
    n_items = float(outcomes.shape[1])
    scores = [DraftScoreMsg(draft_id=s.draft_id, n_items=n_items, n_correct=float(c))
              for s, c in zip(result.scores, counts)]
    check_scores_only(scores, draft_ids=draft_ids, item_ids=result.item_ids)
    info = PrivacyInfo() if policy.mechanism == "none" else PrivacyInfo(policy.mechanism, policy.epsilon,
                                                                          policy.delta)
    return ReportScores(scores, info, charge)


def _check_result(result: ScoreResult) -> np.ndarray:
    if not result.scores:
        raise ReportContentError("scores", "no draft was scored; there is nothing to report")
    y = np.asarray(result.outcomes)
    if y.shape != (len(result.scores), len(result.item_ids)):
        raise ReportContentError("outcomes", f"shape {y.shape} does not match {len(result.scores)} scores x "
                                             f"{len(result.item_ids)} items")
    sums = y.sum(axis=1)
    for i, s in enumerate(result.scores):
        if s.n_items != len(result.item_ids) or s.n_correct != sums[i]:
            problem = (f"draft {s.draft_id!r}: counts {s.n_correct}/{s.n_items} disagree with the outcome "
                       f"matrix ({int(sums[i])}/{len(result.item_ids)})")
            raise ReportContentError(f"scores[{i}]", problem)
    return y


def check_scores_only(scores: Sequence[DraftScoreMsg], *, draft_ids: Collection[str] | None = None,
                      item_ids: Collection[str] = ()) -> None:
    """Raise :class:`ReportContentError` unless every score is a ``DraftScoreMsg`` with exactly the
    fields ``draft_id``, ``n_items``, ``n_correct``; each id is one of ``draft_ids`` (when given), is no
    item id and appears once; and both numbers are finite floats with one ``n_items`` for the report."""
    names = {f.name for f in dataclasses.fields(DraftScoreMsg)}
    if names != SCORE_FIELDS:
        raise ReportContentError("DraftScoreMsg", f"fields {sorted(names)} differ from the reviewed "
                                                  f"{sorted(SCORE_FIELDS)}; review what may leave the device")
    allowed = set(draft_ids) if draft_ids is not None else None
    items = set(item_ids)
    seen: set[str] = set()
    n_items: set[float] = set()
    for i, s in enumerate(scores):
        where = f"scores[{i}]"
        if type(s) is not DraftScoreMsg:
            raise ReportContentError(where, f"expected a DraftScoreMsg, got {type(s).__name__}")
        if not isinstance(s.draft_id, str) or not s.draft_id:
            raise ReportContentError(f"{where}.draft_id", "expected a non-empty string")
        if allowed is not None and s.draft_id not in allowed:
            raise ReportContentError(f"{where}.draft_id", f"{s.draft_id!r} is not a draft of this round")
        if s.draft_id in items:
            raise ReportContentError(f"{where}.draft_id", f"{s.draft_id!r} is a private item id")
        if s.draft_id in seen:
            raise ReportContentError(f"{where}.draft_id", f"{s.draft_id!r} appears twice")
        seen.add(s.draft_id)
        for key in ("n_items", "n_correct"):
            v = getattr(s, key)
            if type(v) is not float or not math.isfinite(v):
                raise ReportContentError(f"{where}.{key}", f"expected a finite float, got {v!r}")
        n_items.add(s.n_items)
    if len(n_items) > 1:
        raise ReportContentError("scores", f"n_items differs between drafts ({sorted(n_items)})")


def policy_for_round(local: PrivacyPolicy, required: PrivacyInfo) -> PrivacyPolicy:
    """The policy to report a round under: the device's own, made stricter by what the round requires.

    A round requiring ``none`` leaves ``local`` as it is. Otherwise the round's mechanism is used with
    ε = min(round ε, local ε) and δ = min(round δ, local δ) where both apply (a local ``none`` policy
    accepts the round's values), under the device's own total budget. Raises :class:`ConfigError` when
    the result is not a valid policy (e.g. a Gaussian round on a device whose total δ is 0): the device
    must then skip the round.
    """
    if required.mechanism == "none":
        return local
    if required.epsilon is None:
        raise ConfigError("privacy.epsilon", f"a round requiring {required.mechanism!r} must state epsilon")
    eps = required.epsilon if local.epsilon is None else min(required.epsilon, local.epsilon)
    delta = 0.0
    if required.mechanism == "gaussian":
        asked = required.delta or 0.0
        delta = asked if local.mechanism != "gaussian" else min(asked, local.delta)
    total_delta = local.total_delta if local.mechanism != "none" else max(local.total_delta, delta)
    return PrivacyPolicy(required.mechanism, eps, delta, local.total_epsilon, total_delta)
