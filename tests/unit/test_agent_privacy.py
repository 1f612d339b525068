"""Local DP in the loop: the round's mechanism noises the counts, the ledger is charged once per round,
and a device whose budget is spent skips the round without sending anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte.wire import PrivacyInfo
from edge_agent.loop import run_once
from tests.fake_fleet import FakeFleet
from tests.unit.test_agent_loop import DRAFTS, make_agent, private_data  # noqa: F401 - fixture

pytest.importorskip("arte.privacy", reason="arte.privacy (local DP) is not in this checkout")


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
