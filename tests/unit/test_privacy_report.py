"""The device side: a report holds scores only, noised under the policy, charged before any noise."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from arte.drafts import Draft
from arte.errors import ConfigError, PrivacyBudgetExceeded, ReportContentError
from arte.privacy import (
    PrivacyAccountant,
    PrivacyPolicy,
    check_scores_only,
    estimate_report,
    policy_for_round,
    report_scores,
)
from arte.scoring import DraftScore, ScoreResult, score_drafts
from arte.tasks import Example, Task
from arte.wire import DraftScoreMsg, PrivacyInfo, Report, to_wire
from tests.support.fakes import CopyingStudent
from tests.support.privacy_audit import assert_no_leaks


class DemoCopyingStudent(CopyingStudent):
    """tests.support.fakes.CopyingStudent reads the FIRST <ans>…</ans> of the prompt, which is the template's
    "<ans> and </ans>" instruction, so every draft scores alike; this one copies the demonstration's."""

    def _text(self, tokens):
        text = super()._text(tokens)
        return text.split("Include your final answer with the tag <ans> and </ans>.", 1)[-1]

ITEMS = tuple(
    Example(f"private:{i}",
            f"Statement: Priya Raman scored a hat trick in match number {i} of the winter league",
            ("plausible" if i % 3 else "implausible",), ("plausible", "implausible"))
    for i in range(12))
TASK = Task("sports", "Judge whether the sentence is plausible.", ITEMS)
DRAFTS = [Draft(f"d{k}", "Statement: Kylian Mbappe hit a home run\nOptions: plausible, implausible",
                f"Think. <ans>{a}</ans>", a, question_id="q0")
          for k, a in enumerate(("plausible", "implausible"))]
DRAFT_IDS = [d.id for d in DRAFTS]


@pytest.fixture(scope="module")
def result() -> ScoreResult:
    return score_drafts(DemoCopyingStudent(), TASK, DRAFTS, ITEMS)


def test_the_fixture_scores_are_real(result):
    assert [(s.n_items, s.n_correct) for s in result.scores] == [(12, 8), (12, 4)]


def test_no_noise_reports_exact_counts_and_charges_nothing(result):
    acc = PrivacyAccountant()
    rs = report_scores(result, PrivacyPolicy(), accountant=acc, round_id="r1", rng=np.random.default_rng(0),
                       draft_ids=DRAFT_IDS)
    assert rs.scores == [DraftScoreMsg("d0", 12.0, 8.0), DraftScoreMsg("d1", 12.0, 4.0)]
    assert rs.privacy == PrivacyInfo() and rs.charge is None and acc.charges == ()


@pytest.mark.parametrize("policy", [
    PrivacyPolicy("randomized_response", 2.0, total_epsilon=10.0),
    PrivacyPolicy("laplace", 2.0, total_epsilon=10.0),
    PrivacyPolicy("gaussian", 2.0, 1e-6, total_epsilon=10.0, total_delta=1e-5),
])
def test_noised_report_states_its_privacy_and_is_charged(result, policy):
    acc = PrivacyAccountant()
    rs = report_scores(result, policy, accountant=acc, round_id="r1", rng=np.random.default_rng(0),
                       draft_ids=DRAFT_IDS)
    assert rs.privacy == PrivacyInfo(policy.mechanism, policy.epsilon, policy.delta)
    assert acc.charges == (rs.charge,) and rs.charge.round_id == "r1" and rs.charge.epsilon == 2.0
    assert [s.draft_id for s in rs.scores] == DRAFT_IDS
    assert all(s.n_items == 12.0 for s in rs.scores)
    # The server can invert it: the estimates are finite and their variance is the mechanism's.
    est = estimate_report(rs.scores, rs.privacy)
    assert all(math.isfinite(e.correct) and e.variance > 0 for e in est)


def test_same_seed_same_report(result):
    policy = PrivacyPolicy("laplace", 1.0)
    a, b = (report_scores(result, policy, accountant=PrivacyAccountant(), round_id="r",
                          rng=np.random.default_rng(5)) for _ in range(2))
    assert a.scores == b.scores


def test_refusal_happens_before_any_noise_is_drawn(result):
    policy = PrivacyPolicy("laplace", 1.0, total_epsilon=1.0)
    acc = PrivacyAccountant()
    report_scores(result, policy, accountant=acc, round_id="r1", rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    before = json.dumps(rng.bit_generator.state)
    with pytest.raises(PrivacyBudgetExceeded):
        report_scores(result, policy, accountant=acc, round_id="r2", rng=rng)
    assert json.dumps(rng.bit_generator.state) == before
    assert len(acc.charges) == 1


def test_report_wire_bytes_hold_no_private_item(result):
    """The whole Report as JSON (what the agent will POST) passes the wire audit, DP on and off."""
    for policy in (PrivacyPolicy(), PrivacyPolicy("gaussian", 1.0, 1e-6, total_delta=1e-6)):
        rs = report_scores(result, policy, accountant=PrivacyAccountant(), round_id="r1",
                           rng=np.random.default_rng(0), draft_ids=DRAFT_IDS)
        body = json.dumps(to_wire(Report("key-1", rs.scores, result.mode, rs.privacy))).encode()
        assert_no_leaks([body], ITEMS, public=[json.dumps(d.to_dict()) for d in DRAFTS])


def test_inconsistent_result_is_refused(result):
    bad = dataclasses.replace(result, scores=[DraftScore("d0", 12, 9), result.scores[1]])
    with pytest.raises(ReportContentError, match=r"scores\[0\]"):
        report_scores(bad, PrivacyPolicy(), accountant=PrivacyAccountant(), round_id="r",
                      rng=np.random.default_rng(0))
    empty = dataclasses.replace(result, scores=[], outcomes=result.outcomes[:0])
    with pytest.raises(ReportContentError, match="nothing to report"):
        report_scores(empty, PrivacyPolicy(), accountant=PrivacyAccountant(), round_id="r",
                      rng=np.random.default_rng(0))


def test_a_draft_outside_the_round_is_refused(result):
    with pytest.raises(ReportContentError, match="not a draft of this round"):
        report_scores(result, PrivacyPolicy(), accountant=PrivacyAccountant(), round_id="r",
                      rng=np.random.default_rng(0), draft_ids=["d0"])


@dataclasses.dataclass(frozen=True)
class _Sneaky(DraftScoreMsg):
    item_text: str = ""


@pytest.mark.parametrize("scores,field", [
    ([DraftScoreMsg("private:3", 12.0, 3.0)], "scores[0].draft_id"),
    ([DraftScoreMsg("", 12.0, 3.0)], "scores[0].draft_id"),
    ([DraftScoreMsg("d0", 12.0, 3.0), DraftScoreMsg("d0", 12.0, 3.0)], "scores[1].draft_id"),
    ([DraftScoreMsg("d0", 12.0, "3")], "scores[0].n_correct"),          # type: ignore[arg-type]
    ([DraftScoreMsg("d0", 12, 3.0)], "scores[0].n_items"),
    ([DraftScoreMsg("d0", 12.0, math.nan)], "scores[0].n_correct"),
    ([DraftScoreMsg("d0", 12.0, 3.0), DraftScoreMsg("d1", 11.0, 3.0)], "scores"),
    ([_Sneaky("d0", 12.0, 3.0, "Priya Raman scored")], "scores[0]"),
])
def test_check_scores_only_names_the_problem(scores, field):
    with pytest.raises(ReportContentError) as e:
        check_scores_only(scores, draft_ids=None, item_ids=[e.id for e in ITEMS])
    assert e.value.field == field


def test_policy_for_round_only_gets_stricter():
    local = PrivacyPolicy("laplace", 1.0, total_epsilon=8.0)
    assert policy_for_round(local, PrivacyInfo()) is local
    p = policy_for_round(local, PrivacyInfo("laplace", 0.5))
    assert (p.mechanism, p.epsilon, p.total_epsilon) == ("laplace", 0.5, 8.0)
    assert policy_for_round(local, PrivacyInfo("randomized_response", 4.0)).epsilon == 1.0
    # A device without a policy takes what the round asks, without a lifetime limit.
    g = policy_for_round(PrivacyPolicy(), PrivacyInfo("gaussian", 2.0, 1e-6))
    assert (g.mechanism, g.epsilon, g.delta, g.total_epsilon) == ("gaussian", 2.0, 1e-6, math.inf)
    # A pure-DP device cannot take a Gaussian round: its total delta is 0.
    with pytest.raises(ConfigError) as e:
        policy_for_round(local, PrivacyInfo("gaussian", 1.0, 1e-6))
    assert e.value.field == "total_delta"
    with pytest.raises(ConfigError, match="privacy.epsilon"):
        policy_for_round(local, PrivacyInfo("laplace", None))
    lg = PrivacyPolicy("gaussian", 1.0, 1e-7, total_epsilon=8.0, total_delta=1e-5)
    assert policy_for_round(lg, PrivacyInfo("gaussian", 3.0, 1e-6)).delta == 1e-7
