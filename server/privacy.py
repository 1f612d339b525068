"""The server side of local differential privacy: a cohort's policy, and what a report may declare.

Contract. A cohort has a privacy policy (``mechanism``, ``epsilon`` per round, ``delta``; stored as the
JSON of :class:`server.schemas.PrivacyIn`) and a k (``min_devices``). A round inherits the policy, or
states a stricter one; devices read it from :class:`arte.wire.RoundInfo` ``.privacy`` and apply
:func:`arte.privacy.policy_for_round`, which may make a report stricter than the round asks, never
looser. The server checks the same rule on arrival (:func:`check_stricter`): a report — or a round's
override of its cohort's policy — must use the required mechanism (any valid one when the requirement
is ``none``), an ε no larger and a δ no larger. A violation is :class:`~server.errors.Unprocessable`
(422) naming ``privacy.mechanism``, ``privacy.epsilon`` or ``privacy.delta``.

:func:`read_report` then reads the report the way aggregation will: it recomputes the noise law from
public values only — the declared mechanism, ε, δ and the number of scores in the report
(:func:`arte.privacy.calibrate`) — and inverts it (:func:`arte.privacy.debias_report`). Values the
declared mechanism cannot produce (a non-whole count under randomized response or without noise, a
count outside [0, n_items], a non-whole ``n_items``) and noise too large to estimate from are refused
(422 naming ``scores[i].n_correct`` / ``scores[i].n_items`` / ``privacy.epsilon``), so every stored
report can be read back by :mod:`server.aggregation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from arte import wire
from arte.errors import ReportContentError
from arte.privacy.estimates import ScoreCounts, debias_report
from server.errors import Unprocessable

__all__ = ["info", "check_stricter", "read_report"]

_RTOL = 1e-12  # float slack: a device that copies the round's epsilon must never be refused


def info(privacy: Mapping[str, Any]) -> wire.PrivacyInfo:
    """The stored JSON of a policy or declaration as the wire's :class:`arte.wire.PrivacyInfo`."""
    return wire.PrivacyInfo(
        mechanism=privacy.get("mechanism", "none"),
        epsilon=privacy.get("epsilon"),
        delta=privacy.get("delta"),
    )


def check_stricter(declared: wire.PrivacyInfo, required: wire.PrivacyInfo, what: str = "report") -> None:
    """Raise :class:`Unprocessable` unless ``declared`` is at least as strict as ``required`` (see the
    module docstring). Both are assumed individually valid (the request schema checked them)."""
    if required.mechanism == "none":
        return
    if declared.mechanism != required.mechanism:
        raise Unprocessable(
            f"the {what} declares local DP mechanism {declared.mechanism!r}; the cohort's policy requires "
            f"{required.mechanism!r}",
            field="privacy.mechanism",
            required=_dict(required),
        )
    assert required.epsilon is not None and declared.epsilon is not None
    if declared.epsilon > required.epsilon * (1 + _RTOL):
        raise Unprocessable(
            f"the {what} declares epsilon={declared.epsilon:g} per round; the policy allows at most "
            f"{required.epsilon:g}",
            field="privacy.epsilon",
            required=_dict(required),
        )
    if (declared.delta or 0.0) > (required.delta or 0.0) * (1 + _RTOL):
        raise Unprocessable(
            f"the {what} declares delta={declared.delta:g}; the policy allows at most "
            f"{required.delta or 0.0:g}",
            field="privacy.delta",
            required=_dict(required),
        )


def read_report(scores: Sequence[ScoreCounts], declared: wire.PrivacyInfo) -> None:
    """Raise :class:`Unprocessable` naming the field when the declared mechanism cannot have produced
    these values, or leaves noise too large to estimate from (the report could not be aggregated)."""
    try:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # checked below
            est, var = debias_report(scores, declared)
    except ReportContentError as e:
        raise Unprocessable(
            f"{e.problem} (declared mechanism {declared.mechanism!r})", field=e.field
        ) from None
    unreadable = np.flatnonzero(~(np.isfinite(est) & np.isfinite(var)))
    if unreadable.size:
        i = int(unreadable[0])
        raise Unprocessable(
            f"epsilon={declared.epsilon:g} over {len(scores)} drafts leaves noise too large to estimate "
            f"from (draft {scores[i].draft_id!r})",
            field="privacy.epsilon",
            draft=f"scores[{i}]",
        )


def _dict(p: wire.PrivacyInfo) -> dict[str, Any]:
    return {"mechanism": p.mechanism, "epsilon": p.epsilon, "delta": p.delta}
