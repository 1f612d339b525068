"""Per-device privacy accounting: what a device has spent, and refusal before a report would overspend.

Contract: a :class:`PrivacyAccountant` holds the charges of every report the device built (one per
noised report; a re-send of the SAME stored report is free and must not be charged again, while noising a
round again is a new release and is charged again). ``charge`` records a report's cost or raises
:class:`arte.errors.PrivacyBudgetExceeded` — before any noise is drawn — when the device's total budget
(ε_total, δ_total) would no longer hold. Its state is a plain JSON-ready dict (``to_dict`` /
``from_dict``) that the agent persists (its SQLite privacy-budget table) in the same transaction as the
report. The budget itself is configuration (:class:`arte.privacy.PrivacyPolicy`), not state.

Composition. Two valid bounds are computed and the tighter one is used:

* basic composition (Dwork & Roth, 2014, Thm 3.16): (Σ ε_i, Σ δ_i);
* zero-concentrated DP (Bun & Steinke, 2016): ρ = Σ ρ_i (each report's ρ from its calibration: ε²/(2D)
  for randomized response and Laplace over D drafts, D/(2σ²) for the Gaussian), converted at the
  budget's δ_total by ε = ρ + 2√(ρ ln(1/δ_total)) (their Prop. 1.3). Only when δ_total > 0.

Example: 100 Laplace rounds of ε = 1 over 16 drafts spend ε = 100 by basic composition but ρ = 3.125,
i.e. ε ≈ 16.3 at δ_total = 1e-6. The unit of privacy is one validation item per round (see
:mod:`arte.privacy.mechanisms`); charges add up over rounds because the same items are reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from arte.errors import ConfigError, PrivacyBudgetExceeded
from arte.privacy.mechanisms import MECHANISMS, Calibration

__all__ = ["Charge", "Spent", "PrivacyAccountant", "zcdp_epsilon"]

STATE_VERSION = 1
_RTOL = 1e-9   # float slack so that e.g. 4 × 0.25 fits a budget of exactly 1


@dataclass(frozen=True)
class Charge:
    """The privacy cost of one noised report."""

    round_id: str
    mechanism: str
    epsilon: float
    delta: float
    rho: float

    def to_dict(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "mechanism": self.mechanism, "epsilon": self.epsilon,
                "delta": self.delta, "rho": self.rho}

    @classmethod
    def from_dict(cls, d: Any, where: str = "charge") -> "Charge":
        """Validate a stored charge; errors name the field (e.g. ``charges[3].epsilon``)."""
        if not isinstance(d, dict):
            raise ConfigError(where, f"expected an object, got {type(d).__name__}")
        if not isinstance(d.get("round_id"), str):
            raise ConfigError(f"{where}.round_id", "expected a string")
        if d.get("mechanism") not in MECHANISMS[1:]:
            raise ConfigError(f"{where}.mechanism", f"must be one of {', '.join(MECHANISMS[1:])}, "
                                                    f"got {d.get('mechanism')!r}")
        vals = {}
        for key, lo_ok in (("epsilon", False), ("delta", True), ("rho", False)):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or (v == 0 and not lo_ok) or (key == "delta" and v >= 1):
                raise ConfigError(f"{where}.{key}", f"invalid value {v!r}")
            vals[key] = float(v)
        return cls(d["round_id"], d["mechanism"], vals["epsilon"], vals["delta"], vals["rho"])


def zcdp_epsilon(rho: float, delta: float) -> float:
    """(ε, δ)-DP implied by ρ-zCDP: ε = ρ + 2√(ρ ln(1/δ)) (Bun & Steinke, 2016, Prop. 1.3)."""
    if not 0.0 < delta < 1.0:
        return math.inf
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


@dataclass(frozen=True)
class Spent:
    """What the charges spend: ``epsilon`` at ``delta`` is the tighter of the two bounds (``method``)."""

    epsilon: float
    delta: float
    method: str                # "basic" or "zcdp" ("none" when nothing was charged)
    basic_epsilon: float
    basic_delta: float
    rho: float
    n_reports: int


class PrivacyAccountant:
    """Charges of one device. Not thread-safe: the agent owns it and persists ``to_dict()``."""

    def __init__(self, charges: Iterable[Charge] = ()) -> None:
        self._charges: list[Charge] = list(charges)

    @property
    def charges(self) -> tuple[Charge, ...]:
        return tuple(self._charges)

    def spent(self, total_delta: float, extra: Charge | None = None) -> Spent:
        """The tightest valid (ε, δ ≤ ``total_delta``) for the charges (plus ``extra``, if given)."""
        charges = self._charges + ([extra] if extra is not None else [])
        if not charges:
            return Spent(0.0, 0.0, "none", 0.0, 0.0, 0.0, 0)
        eps_b = math.fsum(c.epsilon for c in charges)
        delta_b = math.fsum(c.delta for c in charges)
        rho = math.fsum(c.rho for c in charges)
        basic = eps_b if delta_b <= total_delta * (1 + _RTOL) else math.inf
        zcdp = zcdp_epsilon(rho, total_delta)
        if basic <= zcdp:
            return Spent(basic, delta_b, "basic", eps_b, delta_b, rho, len(charges))
        return Spent(zcdp, total_delta, "zcdp", eps_b, delta_b, rho, len(charges))

    def check(self, round_id: str, calibration: Calibration, *, total_epsilon: float,
              total_delta: float) -> Charge:
        """The charge a report under ``calibration`` would record; raises
        :class:`PrivacyBudgetExceeded` when it would not fit the budget. Records nothing."""
        if calibration.mechanism == "none":
            raise ConfigError("mechanism", "a report without noise ('none') has no finite privacy cost; "
                                           "it cannot be charged to a budget")
        cal = calibration
        charge = Charge(round_id, cal.mechanism, cal.epsilon, cal.delta, cal.rho)
        after = self.spent(total_delta, charge)
        if not after.epsilon <= total_epsilon * (1 + _RTOL):
            now = self.spent(total_delta)
            raise PrivacyBudgetExceeded(round_id, (charge.epsilon, charge.delta), (now.epsilon, now.delta),
                                        (total_epsilon, total_delta))
        return charge

    def charge(self, round_id: str, calibration: Calibration, *, total_epsilon: float,
               total_delta: float) -> Charge:
        """Check, then record the charge of one report; call it before drawing the noise."""
        charge = self.check(round_id, calibration, total_epsilon=total_epsilon, total_delta=total_delta)
        self._charges.append(charge)
        return charge

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: ``{"version": 1, "charges": [...]}``."""
        return {"version": STATE_VERSION, "charges": [c.to_dict() for c in self._charges]}

    @classmethod
    def from_dict(cls, state: Any) -> "PrivacyAccountant":
        """Restore from :meth:`to_dict`; a malformed state raises :class:`ConfigError` naming the field."""
        if not isinstance(state, dict):
            raise ConfigError("state", f"expected an object, got {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise ConfigError("state.version", f"expected {STATE_VERSION}, got {state.get('version')!r}")
        charges = state.get("charges")
        if not isinstance(charges, list):
            raise ConfigError("state.charges", "expected a list")
        return cls(Charge.from_dict(c, f"state.charges[{i}]") for i, c in enumerate(charges))
