"""The device side of local differential privacy: which scores a report may carry, and the budget.

Contract: :func:`private_scores` turns a scoring result into the per-draft scores to send, the
:class:`arte.wire.PrivacyInfo` to declare, and the charge to record in the state's privacy ledger (None
when nothing was charged). The round's requirement is reconciled with the device's own policy (settings
``privacy_total_epsilon``, ``privacy_total_delta``: the lifetime budget; the server may make a report
stricter, never looser) and the noise comes from :mod:`arte.privacy`; the accountant is rebuilt from the
ledger, so a refusal (:class:`BudgetError`) happens before any noise is drawn. The caller stores the
charge in the same transaction as the queued report: a report is built, charged and noised once.

:func:`budget_status` is what ``edge-agent status`` shows: the lifetime budget and what the ledger has
spent of it, by basic composition and by the accountant's tightest bound.

A round that asks for no noise gets exact counts. A build of arte without :mod:`arte.privacy` can only
report such rounds; a round that requires noise is then refused with a clear error.
"""

from __future__ import annotations

import math
from typing import Any, Collection

import numpy as np

from arte import privacy
from arte.errors import ArteError, ConfigError, PrivacyBudgetExceeded
from arte.privacy import Charge, PrivacyAccountant
from arte.scoring import ScoreResult
from arte.wire import DraftScoreMsg, PrivacyInfo, RoundInfo
from edge_agent.errors import AgentError, BudgetError
from edge_agent.state import State

__all__ = ["private_scores", "budget_status"]


def private_scores(state: State, rnd: RoundInfo, result: ScoreResult, draft_ids: Collection[str],
                   rng: np.random.Generator) -> tuple[list[DraftScoreMsg], PrivacyInfo, dict[str, Any] | None]:
    """Scores to send for ``rnd``, the privacy declared, and the ledger charge (see the module docstring)."""

    try:
        local = privacy.PrivacyPolicy(total_epsilon=float(state.get("privacy_total_epsilon", "inf")),
                                      total_delta=float(state.get("privacy_total_delta", "0")))
        policy = privacy.policy_for_round(local, rnd.privacy)
        accountant = privacy.PrivacyAccountant(privacy.Charge.from_dict(
            {k: c[k] for k in ("round_id", "mechanism", "epsilon", "delta", "rho")}, f"ledger[{i}]")
            for i, c in enumerate(state.privacy_charges()))
        out = privacy.report_scores(result, policy, accountant=accountant, round_id=rnd.round_id, rng=rng,
                                    draft_ids=draft_ids)
    except PrivacyBudgetExceeded as e:
        raise BudgetError(str(e)) from None
    except ConfigError as e:
        raise AgentError(f"round {rnd.round_id}: cannot report under its privacy requirement: {e}") from None
    except ArteError as e:  # ReportContentError: something other than scores was about to leave
        raise AgentError(f"round {rnd.round_id}: report refused before sending: {e}") from None
    charge = out.charge.to_dict() if out.charge is not None else None
    if charge is not None and not math.isfinite(charge["rho"]):
        charge["rho"] = 0.0  # no zCDP bound for this mechanism; the ledger keeps (epsilon, delta)
    return out.scores, out.privacy, charge


def _limit(x: float) -> float | None:
    return x if math.isfinite(x) else None   # JSON has no infinity: None means "no limit"


def budget_status(state: State) -> dict[str, Any]:
    """The device's privacy budget and what its ledger spent (JSON-ready).

    ``basic`` sums the charges (Σ ε, Σ δ); ``spent`` is the accountant's tightest bound, at the delta the
    agent checks budgets at (the configured total delta, or — with none configured — the largest delta a
    round required, as :func:`arte.privacy.policy_for_round` does); ``remaining`` is budget − spent.
    """
    charges = state.privacy_charges()
    total_eps = float(state.get("privacy_total_epsilon", "inf"))
    total_delta = float(state.get("privacy_total_delta", "0"))
    out: dict[str, Any] = {
        "budget": {"epsilon": _limit(total_eps), "delta": total_delta},
        "basic": {"epsilon": math.fsum(c["epsilon"] for c in charges),
                  "delta": math.fsum(c["delta"] for c in charges)},
        "n_reports": len(charges),
    }

    at_delta = max([total_delta, *(c["delta"] for c in charges)]) if total_delta == 0 else total_delta
    keys = ("round_id", "mechanism", "epsilon", "delta", "rho")
    accountant = PrivacyAccountant(Charge.from_dict({k: c[k] for k in keys}, f"ledger[{i}]")
                                   for i, c in enumerate(charges))
    spent = accountant.spent(at_delta)
    out["spent"] = {"epsilon": _limit(spent.epsilon), "delta": spent.delta, "method": spent.method}
    left = max(0.0, total_eps - spent.epsilon) if math.isfinite(spent.epsilon) else 0.0
    out["remaining_epsilon"] = _limit(left)
    return out
