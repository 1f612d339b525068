"""Local DP in the loop: the round's mechanism noises the counts, the ledger is charged once per round,
and a device whose budget is spent skips the round without sending anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte.wire import PrivacyInfo
from edge_agent.loop import run_once
from tests.support.agent import DRAFTS, make_agent
from tests.support.fake_fleet import FakeFleet


def test_laplace_round_is_noised_and_charged_once(tmp_path: Path, private_data: Path) -> None:  # noqa: F811
    fleet = FakeFleet()
    fleet.open_round(DRAFTS, privacy=PrivacyInfo("laplace", 1.0))
    fleet.lose_answers = 2                       # the first delivery's answer is lost: a re-send follows
    it = run_once(make_agent(tmp_path, fleet, private_data))
    assert it.round["step"] == "queued"
    run_once(make_agent(tmp_path, fleet, private_data))
    (report,) = fleet.report_bodies
    assert report["privacy"] == {"mechanism": "laplace", "epsilon": 1.0, "delta": 0.0}
    assert any(s["n_correct"] != int(s["n_correct"]) for s in report["scores"])   # noise was added
    st = make_agent(tmp_path, fleet, private_data).state
    assert [c["round_id"] for c in st.privacy_charges()] == ["r1"] and st.privacy_spent() == 1.0


def test_spent_budget_skips_the_round_and_sends_nothing(tmp_path: Path, private_data: Path) -> None:  # noqa: F811
    fleet = FakeFleet()
    fleet.open_round(DRAFTS, privacy=PrivacyInfo("laplace", 1.0))
    agent = make_agent(tmp_path, fleet, private_data)
    agent.state.set(privacy_total_epsilon="1.5")
    assert run_once(agent).round["step"] == "queued"
    fleet.open_round(DRAFTS, round_id="r2", privacy=PrivacyInfo("laplace", 1.0))
    it = run_once(make_agent(tmp_path, fleet, private_data))
    assert it.round["step"] == "skipped" and it.round["budget"] is True and "budget" in it.round["reason"]
    assert len(fleet.report_bodies) == 1
    assert make_agent(tmp_path, fleet, private_data).state.privacy_spent() == 1.0


def test_budget_settings_are_checked_and_the_status_reports_the_tight_bound(tmp_path: Path,  # noqa: F811
                                                                            private_data: Path) -> None:
    from arte.errors import ConfigError
    from edge_agent.config import validate_setting
    from edge_agent.privacy import budget_status

    assert validate_setting("privacy_total_epsilon", "16") == "16.0"
    assert validate_setting("privacy_total_epsilon", "inf") == "inf"
    assert validate_setting("privacy_total_delta", "1e-5") == "1e-05"
    for key, value in [("privacy_total_epsilon", "0"), ("privacy_total_epsilon", "lots"),
                       ("privacy_total_delta", "1"), ("privacy_total_delta", "-1e-9")]:
        with pytest.raises(ConfigError, match=key):
            validate_setting(key, value)

    fleet = FakeFleet()
    st = make_agent(tmp_path, fleet, private_data).state
    assert budget_status(st)["budget"] == {"epsilon": None, "delta": 0.0}   # no limit: JSON null
    for i in range(4):   # four Gaussian rounds: zCDP at the rounds' delta beats the sum of epsilons
        fleet.open_round(DRAFTS, round_id=f"g{i}", privacy=PrivacyInfo("gaussian", 1.0, 1e-6))
        assert run_once(make_agent(tmp_path, fleet, private_data)).round["step"] == "queued"
    status = budget_status(make_agent(tmp_path, fleet, private_data).state)
    assert status["basic"] == {"epsilon": 4.0, "delta": pytest.approx(4e-6)} and status["n_reports"] == 4
    assert status["spent"]["method"] == "zcdp" and status["spent"]["delta"] == 1e-6
    assert status["spent"]["epsilon"] < 4.0 and status["remaining_epsilon"] is None
