"""Property tests (hypothesis) for the two parsers every report and manifest passes through:
``arte.wire.from_wire`` on the agent side and the server's pydantic request models.

Random JSON never crashes them: it is either accepted or refused with the parser's own error naming a
field (``WireError`` / pydantic ``ValidationError``), never another exception. Valid messages round-trip:
``from_wire(to_wire(m)) == m`` for reports, receipts and manifests, and what an agent encodes for a
report is accepted by the server's ``ReportIn`` unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from arte.wire import (
    DatasetManifest,
    DraftScoreMsg,
    Metrics,
    PrivacyInfo,
    Report,
    ReportReceipt,
    WireError,
    from_wire,
    to_wire,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
text = st.text(max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)

scores = st.lists(st.builds(DraftScoreMsg, draft_id=text, n_items=finite, n_correct=finite), max_size=8)
privacy = st.builds(PrivacyInfo, mechanism=st.sampled_from(["none", "laplace"]),
                    epsilon=st.none() | finite, delta=st.none() | finite)
reports = st.builds(Report, idempotency_key=text, scores=scores, mode=st.sampled_from(["loglik", "generate"]),
                    privacy=privacy, agent_version=text)
receipts = st.builds(ReportReceipt, report_id=text, round_id=text, device_id=text,
                     n_scores=st.integers(0, 10_000), received_at=text, duplicate=st.booleans())
manifests = st.builds(DatasetManifest, dataset_id=text, cohort_id=text, round_id=st.none() | text, sha256=text,
                      size=st.integers(0, 2**40), n_examples=st.integers(0, 10**6), created_at=text, teacher=text,
                      adapter=st.none() | text, signature=st.none() | text,
                      counts=st.dictionaries(text, st.integers(0, 1000), max_size=4))


def _mutations(good: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid message with one field replaced by random JSON, dropped, or an unknown field added."""
    keys = sorted(good)
    replace = st.tuples(st.sampled_from(keys), json_value).map(lambda kv: {**good, kv[0]: kv[1]})
    drop = st.sampled_from(keys).map(lambda k: {x: v for x, v in good.items() if x != k})
    extra = st.tuples(st.text(min_size=1, max_size=8), json_value).map(lambda kv: {**good, "x" + kv[0]: kv[1]})
    return replace | drop | extra


@FAST
@given(data=json_value, cls=st.sampled_from([Report, ReportReceipt, DatasetManifest, Metrics, DraftScoreMsg]))
def test_from_wire_never_crashes_on_random_json(data: Any, cls: type) -> None:
    try:
        from_wire(cls, data)
    except WireError as e:
        assert e.field and e.field.startswith(cls.__name__)


@FAST
@given(msg=reports | receipts | manifests)
def test_valid_messages_round_trip(msg: Any) -> None:
    wire = json.loads(json.dumps(to_wire(msg)))
    assert from_wire(type(msg), wire) == msg


@FAST
@given(msg=reports, bad=st.data())
def test_mutated_reports_are_refused_with_a_field_or_accepted(msg: Report, bad: st.DataObject) -> None:
    data = bad.draw(_mutations(to_wire(msg)))
    try:
        out = from_wire(Report, data)
    except WireError as e:
        assert e.field.startswith("Report")
    else:
        assert isinstance(out, Report)


@FAST
@given(data=json_value)
def test_server_report_schema_never_crashes_on_random_json(data: Any) -> None:
    from server.schemas import ReportIn

    try:
        ReportIn.model_validate(data)
    except ValidationError as e:
        assert all(err["loc"] is not None for err in e.errors())


@FAST
@given(msg=reports, bad=st.data())
def test_server_report_schema_on_mutated_reports(msg: Report, bad: st.DataObject) -> None:
    """A mutated report is accepted, or refused with errors that each name the field that was changed,
    dropped (``missing``) or added."""
    from server.schemas import ReportIn

    data = bad.draw(_mutations(to_wire(msg)))
    try:
        ReportIn.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            assert err["loc"], err
            assert err["loc"][0] in data or err["type"] == "missing", err


@FAST
@given(n=st.integers(1, 20), mode=st.sampled_from(["loglik", "generate"]), eps=finite.filter(lambda x: x > 0),
       counts=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=20, max_size=20))
def test_what_an_agent_sends_the_server_accepts_unchanged(n: int, mode: str, eps: float,
                                                          counts: list[tuple[int, int]]) -> None:
    from server.schemas import ReportIn

    scores = [DraftScoreMsg(f"d{i}", float(max(a, b)), float(min(a, b))) for i, (a, b) in enumerate(counts[:n])]
    report = Report(idempotency_key="round-1:dev", scores=scores, mode=mode,
                    privacy=PrivacyInfo(mechanism="laplace", epsilon=eps), agent_version="0.1")
    body = json.loads(json.dumps(to_wire(report)))
    parsed = ReportIn.model_validate(body)
    assert parsed.model_dump(mode="json") == {**body, "privacy": {**body["privacy"], "delta": None}}
    assert from_wire(Report, parsed.model_dump(mode="json")) == report
