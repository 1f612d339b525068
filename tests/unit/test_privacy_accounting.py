"""Privacy accountant: composition arithmetic, refusal at the budget, persisted state."""

from __future__ import annotations

import json
import math

import pytest

from arte.errors import ConfigError, PrivacyBudgetExceeded
from arte.privacy import Charge, PrivacyAccountant, calibrate, zcdp_epsilon


def _lap(eps: float, d: int = 16):
    return calibrate("laplace", eps, 0.0, d)


def test_basic_composition_adds_epsilons_and_refuses_at_the_budget():
    acc = PrivacyAccountant()
    cal = calibrate("randomized_response", 0.25, 0.0, 8)
    for i in range(4):   # 4 x 0.25 == 1.0 exactly fits (float slack)
        acc.charge(f"r{i}", cal, total_epsilon=1.0, total_delta=0.0)
    spent = acc.spent(0.0)
    assert spent.epsilon == pytest.approx(1.0) and spent.method == "basic" and spent.n_reports == 4
    with pytest.raises(PrivacyBudgetExceeded) as e:
        acc.charge("r4", cal, total_epsilon=1.0, total_delta=0.0)
    assert e.value.round_id == "r4"
    assert e.value.requested == (0.25, 0.0)
    assert e.value.spent[0] == pytest.approx(1.0)
    assert e.value.budget == (1.0, 0.0)
    assert len(acc.charges) == 4   # a refusal records nothing


def test_refusal_before_the_first_report_when_one_round_does_not_fit():
    acc = PrivacyAccountant()
    with pytest.raises(PrivacyBudgetExceeded):
        acc.check("r0", _lap(2.0), total_epsilon=1.0, total_delta=0.0)
    assert acc.charges == ()


def test_zcdp_composition_of_many_laplace_rounds():
    """100 rounds of eps=1 over 16 drafts: basic says 100; zCDP rho = 100 * 1/32 gives ~16.3 at 1e-6."""
    acc = PrivacyAccountant()
    for i in range(100):
        acc.charge(f"r{i}", _lap(1.0), total_epsilon=20.0, total_delta=1e-6)
    spent = acc.spent(1e-6)
    assert spent.basic_epsilon == pytest.approx(100.0)
    assert spent.rho == pytest.approx(100 / 32)
    assert spent.method == "zcdp" and spent.delta == 1e-6
    assert spent.epsilon == pytest.approx(100 / 32 + 2 * math.sqrt(100 / 32 * math.log(1e6)))
    assert spent.epsilon < 20.0


def test_number_of_rounds_before_refusal_matches_the_closed_form():
    """With total (eps=5, delta=1e-6) and Gaussian rounds of rho each, rounds continue while
    k*rho + 2 sqrt(k*rho*ln(1/delta)) <= 5 (basic composition is never tighter here)."""
    cal = calibrate("gaussian", 0.5, 1e-8, 16)
    acc = PrivacyAccountant()
    rounds = 0
    while True:
        try:
            acc.charge(f"r{rounds}", cal, total_epsilon=5.0, total_delta=1e-6)
        except PrivacyBudgetExceeded:
            break
        rounds += 1
    expected = max(k for k in range(1, 10_000) if zcdp_epsilon(k * cal.rho, 1e-6) <= 5.0)
    assert rounds == expected
    assert rounds > 10   # basic composition (eps 0.5 each) would have stopped at 10


def test_basic_bound_wins_for_few_rounds_and_tracks_delta():
    acc = PrivacyAccountant()
    cal = calibrate("gaussian", 1.0, 1e-7, 16)
    acc.charge("r0", cal, total_epsilon=10.0, total_delta=1e-6)
    s = acc.spent(1e-6)
    assert s.method == "basic" and s.epsilon == pytest.approx(1.0) and s.delta == pytest.approx(1e-7)


def test_pure_budget_refuses_any_delta():
    acc = PrivacyAccountant()
    with pytest.raises(PrivacyBudgetExceeded):
        acc.charge("r0", calibrate("gaussian", 0.1, 1e-9, 4), total_epsilon=100.0, total_delta=0.0)


def test_basic_delta_composition_exceeding_total_delta_falls_back_to_zcdp():
    acc = PrivacyAccountant()
    cal = calibrate("gaussian", 0.1, 1e-6, 4)
    for i in range(3):
        acc.charge(f"r{i}", cal, total_epsilon=100.0, total_delta=2e-6)
    s = acc.spent(2e-6)
    assert s.basic_delta == pytest.approx(3e-6)
    assert s.method == "zcdp" and s.epsilon == pytest.approx(zcdp_epsilon(3 * cal.rho, 2e-6))


def test_a_report_without_noise_cannot_be_charged():
    with pytest.raises(ConfigError, match="mechanism"):
        PrivacyAccountant().charge("r0", calibrate("none", None, 0.0, 4), total_epsilon=math.inf,
                                   total_delta=0)


def test_state_round_trips_through_json():
    acc = PrivacyAccountant()
    acc.charge("a", _lap(0.5), total_epsilon=10, total_delta=0)
    acc.charge("b", calibrate("gaussian", 1.0, 1e-6, 16), total_epsilon=10, total_delta=1e-5)
    state = json.loads(json.dumps(acc.to_dict()))
    again = PrivacyAccountant.from_dict(state)
    assert again.charges == acc.charges
    assert again.spent(1e-5) == acc.spent(1e-5)


@pytest.mark.parametrize("state,field", [
    ([], "state"),
    ({"version": 2, "charges": []}, "state.version"),
    ({"version": 1}, "state.charges"),
    ({"version": 1, "charges": [5]}, "state.charges[0]"),
    ({"version": 1, "charges": [{"round_id": 1}]}, "state.charges[0].round_id"),
    ({"version": 1, "charges": [{"round_id": "r", "mechanism": "none"}]}, "state.charges[0].mechanism"),
    ({"version": 1, "charges": [{"round_id": "r", "mechanism": "laplace", "epsilon": -1, "delta": 0,
                                 "rho": 1}]}, "state.charges[0].epsilon"),
    ({"version": 1, "charges": [{"round_id": "r", "mechanism": "laplace", "epsilon": 1, "delta": 0,
                                 "rho": "x"}]}, "state.charges[0].rho"),
])
def test_malformed_state_names_the_field(state, field):
    with pytest.raises(ConfigError) as e:
        PrivacyAccountant.from_dict(state)
    assert e.value.field == field


def test_charge_dict_is_plain_json():
    c = Charge("r", "laplace", 1.0, 0.0, 0.5)
    assert Charge.from_dict(json.loads(json.dumps(c.to_dict()))) == c
