import json

import pytest

from arte.wire import DatasetManifest, DraftScoreMsg, PrivacyInfo, Report, WireError, from_wire, to_wire


def test_roundtrip() -> None:
    r = Report("k1", [DraftScoreMsg("d1", 40, 31), DraftScoreMsg("d2", 40.0, 12.5)], "loglik",
               PrivacyInfo("laplace", 1.0, None), "0.1.0")
    data = json.loads(json.dumps(to_wire(r)))
    assert from_wire(Report, data) == r
    m = DatasetManifest("ds", "c", None, "ab" * 32, 10, 2, "t", "teacher", None, counts={"kept": 2})
    assert from_wire(DatasetManifest, to_wire(m)) == m


@pytest.mark.parametrize("data, field", [
    ({"scores": [], "mode": "loglik"}, "Report.idempotency_key"),
    ({"idempotency_key": 3, "scores": [], "mode": "loglik"}, "Report.idempotency_key"),
    ({"idempotency_key": "k", "scores": [{"draft_id": "d", "n_items": "40", "n_correct": 1}], "mode": "x"},
     "Report.scores[0].n_items"),
    ({"idempotency_key": "k", "scores": [{"draft_id": "d", "n_items": True, "n_correct": 1}], "mode": "x"},
     "Report.scores[0].n_items"),
    ({"idempotency_key": "k", "scores": {}, "mode": "x"}, "Report.scores"),
    ({"idempotency_key": "k", "scores": [], "mode": "x", "text": "leak"}, "Report.text"),
    ({"idempotency_key": "k", "scores": [], "mode": "x", "privacy": {"mechanism": 1}}, "Report.privacy.mechanism"),
])
def test_errors_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(WireError) as ei:
        from_wire(Report, data)
    assert ei.value.field == field
