"""Real student, real private items: the report built from them (DP off and on) carries scores only, the
server reads it back, and its wire bytes pass the audit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arte.backends import open_student
from arte.drafts import read_drafts
from arte.privacy import PrivacyAccountant, PrivacyPolicy, estimate_report, report_scores
from arte.scoring import ScoringConfig, score_drafts
from arte.tasks import load_task, split_task
from arte.wire import Report, from_wire, to_wire
from tests.support.privacy_audit import assert_no_leaks, find_leaks


@pytest.mark.slow
def test_real_report_is_scores_only_and_readable(default_model, bigbench_dir, data_dir):
    task = load_task(bigbench_dir / "navigate.json")
    items = list(split_task(task, seed=3, n_seeds=0, validation=1.0).validation)[:5]
    drafts = read_drafts(data_dir / "drafts_navigate.jsonl")[:2]
    student = open_student(default_model, "llama", n_threads=1)
    try:
        result = score_drafts(student, task, drafts, items, ScoringConfig(mode="loglik"))
    finally:
        student.close()
    public = [json.dumps(d.to_dict()) for d in drafts] + [task.description]
    accountant = PrivacyAccountant()
    dp = PrivacyPolicy("gaussian", 2.0, 1e-6, total_epsilon=8.0, total_delta=1e-5)
    for policy in (PrivacyPolicy(), dp):
        rs = report_scores(result, policy, accountant=accountant, round_id="round-1",
                           rng=np.random.default_rng(0), draft_ids=[d.id for d in drafts])
        body = json.dumps(to_wire(Report("idem-1", rs.scores, result.mode, rs.privacy))).encode()
        assert_no_leaks([body], items, public=public)
        received = from_wire(Report, json.loads(body))
        est = estimate_report(received.scores, received.privacy)
        if policy.mechanism == "none":
            assert [e.correct for e in est] == [s.n_correct for s in result.scores]
        assert [e.draft_id for e in est] == [d.id for d in drafts]
    assert len(accountant.charges) == 1
    # The audit is not vacuous here: the same bytes with an item's text appended are caught.
    leaky = body[:-1] + b', "debug": ' + json.dumps(items[0].input).encode() + b"}"
    assert find_leaks([leaky], items, public=public)
