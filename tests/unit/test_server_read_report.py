"""``server.privacy.read_report``: a report is refused, naming the field, when its declared mechanism
cannot have produced its counts or leaves noise too large to estimate from; otherwise it reads as
``arte.privacy.estimate_report`` reads it."""

from __future__ import annotations

import pytest

from arte import wire
from arte.privacy import debias_report, estimate_report
from server import privacy
from server.errors import Unprocessable

SCORES = [wire.DraftScoreMsg("a", 10.0, 3.0), wire.DraftScoreMsg("b", 10.0, 4.0)]


def test_a_readable_report_passes_and_debias_report_is_estimate_report_as_arrays() -> None:
    for declared in (wire.PrivacyInfo(), wire.PrivacyInfo("randomized_response", 2.0),
                     wire.PrivacyInfo("laplace", 1.0), wire.PrivacyInfo("gaussian", 1.0, 1e-6)):
        privacy.read_report(SCORES, declared)
        est, var = debias_report(SCORES, declared)
        assert [(e.correct, e.variance) for e in estimate_report(SCORES, declared)] == list(zip(est, var))


@pytest.mark.parametrize(
    "scores, declared, field, detail",
    [
        ([wire.DraftScoreMsg("a", 10.0, 3.5)], wire.PrivacyInfo(), "scores[0].n_correct", {}),
        ([*SCORES, wire.DraftScoreMsg("c", 0.0, 0.0)], wire.PrivacyInfo("laplace", 1.0),
         "scores[2].n_items", {}),
        (SCORES, wire.PrivacyInfo("randomized_response", 1e-20), "privacy.epsilon", {"draft": "scores[0]"}),
    ],
)
def test_unreadable_reports_are_refused_naming_the_field(scores, declared, field, detail) -> None:
    with pytest.raises(Unprocessable) as e:
        privacy.read_report(scores, declared)
    assert e.value.field == field and detail.items() <= e.value.detail.items()
