"""The report rules' quick check (``server.report_store._check``: set and range tests over all scores)
refuses exactly the reports that the rules applied one score at a time refuse, and then with the same
error (hypothesis over draft ids, duplicates, and counts including negative, fractional, infinite and
NaN values, with and without local DP)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from server import report_store
from server.errors import ApiError
from server.report_store import ReportRequest, _check, _refuse_scores
from server.schemas import DraftScoreIn, PrivacyIn, ReportIn

KNOWN = frozenset({"d0", "d1", "d2"})
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
specials = st.sampled_from([math.inf, -math.inf, math.nan])
counts = st.one_of(st.integers(-3, 12).map(float), st.floats(-3, 12), specials)
score = st.builds(lambda d, n, c: DraftScoreIn.model_construct(draft_id=d, n_items=n, n_correct=c),
                  st.sampled_from(["d0", "d1", "d2", "x"]), counts, counts)


def _outcome(fn, *args) -> tuple[str, str, str] | None:
    try:
        fn(*args)
    except ApiError as e:
        return type(e).__name__, e.field or "", e.message
    return None


@settings(max_examples=400, deadline=None)
@given(scores=st.lists(score, min_size=1, max_size=5), noised=st.booleans())
def test_the_quick_check_refuses_what_the_rules_refuse_with_the_same_error(scores, noised) -> None:
    laplace = PrivacyIn.model_construct(mechanism="laplace", epsilon=1.0, delta=None)
    privacy = laplace if noised else PrivacyIn()
    body = ReportIn.model_construct(idempotency_key="k", scores=scores, mode="loglik", privacy=privacy,
                                    agent_version="")
    rnd = SimpleNamespace(id="rnd_1", state="open", closes_at=None, mode="loglik",
                          privacy={"mechanism": "laplace", "epsilon": 1.0} if noised else {})
    report_store._ROUND_DRAFTS[rnd.id] = KNOWN
    one_by_one = _outcome(_refuse_scores, body, rnd.id, KNOWN, noised)
    quick = _outcome(_check, None, rnd, ReportRequest("dev_1", "coh_1", rnd.id, body, NOW))
    if one_by_one is not None:
        assert quick == one_by_one
    else:  # the score rules pass: what remains is the privacy reading's verdict, never a score rule's
        assert quick is None or quick[0] == "Unprocessable"
