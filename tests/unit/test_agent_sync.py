"""Store-and-forward: a report written offline arrives after reconnect, exactly once."""

from __future__ import annotations

import json
from pathlib import Path

from arte.retry import RetryPolicy
from arte.wire import DraftScoreMsg, EnrollRequest, Report
from edge_agent.client import ServerClient
from edge_agent.state import State
from edge_agent.sync import deliver, queue_report
from tests.support.fake_fleet import FakeFleet


def make(tmp_path: Path) -> tuple[FakeFleet, State, ServerClient]:
    fleet = FakeFleet()
    fleet.open_round([{"id": "d1", "question": "q", "rationale": "r", "answer": "a"}])
    c = ServerClient("http://fleet.test", None, transport=fleet.transport, wait=lambda s: None)
    resp, _ = c.enroll(EnrollRequest(token="tok-1", device_name="d", profile_id="laptop-cpu"))
    client = ServerClient("http://fleet.test", resp.device_key, transport=fleet.transport, wait=lambda s: None,
                          retry=RetryPolicy(attempts=2))
    return fleet, State(tmp_path), client


REPORT = Report(idempotency_key="key-1", scores=[DraftScoreMsg("d1", 10.0, 7.0)], mode="loglik")


def test_offline_report_arrives_once_after_reconnect(tmp_path: Path) -> None:
    fleet, st, client = make(tmp_path)
    queue_report(st, "r1", REPORT)
    fleet.down = 100                       # the server is down
    out = deliver(st, client)
    assert out.delivered == [] and out.pending == 1 and "ConnectError" in out.error
    assert st.pending()[0].attempts == 1 and fleet.reports == {}
    fleet.down = 0                         # back up
    out = deliver(st, client)
    assert len(out.delivered) == 1 and out.pending == 0 and not out.delivered[0]["duplicate"]
    assert deliver(st, client).delivered == []          # nothing left to send
    assert len(fleet.report_bodies) == 1 and fleet.report_bodies[0]["idempotency_key"] == "key-1"


def test_lost_answer_is_resent_and_the_server_dedups(tmp_path: Path) -> None:
    fleet, st, client = make(tmp_path)
    queue_report(st, "r1", REPORT)
    fleet.lose_answers = 2                 # processed, but the agent never hears back (both attempts)
    out = deliver(st, client)
    assert out.pending == 1 and len(fleet.report_bodies) == 1
    out = deliver(st, client)
    assert out.delivered[0]["duplicate"] is True and out.delivered[0]["report_id"] == "rep1"
    assert len(fleet.report_bodies) == 1   # exactly once on the server
    posts = fleet.requests("POST", "/reports$")
    assert len({p.content for p in posts}) == 1   # the same bytes every time


def test_sent_log_holds_exactly_the_body(tmp_path: Path) -> None:
    fleet, st, client = make(tmp_path)
    queue_report(st, "r1", REPORT)
    deliver(st, client)
    (sent,) = st.sent()
    assert sent["body"].encode() == fleet.requests("POST", "/reports$")[0].content
    assert json.loads(sent["body"])["scores"] == [{"draft_id": "d1", "n_correct": 7.0, "n_items": 10.0}]
    assert sent["status"] == 201 and sent["kind"] == "report"


def test_refused_message_is_kept_and_not_resent(tmp_path: Path) -> None:
    fleet, st, client = make(tmp_path)
    queue_report(st, "gone", REPORT)       # a round the server does not know
    queue_report(st, "r1", Report("key-2", [DraftScoreMsg("d1", 10.0, 1.0)], "loglik"))
    out = deliver(st, client)
    assert len(out.rejected) == 1 and "404" in out.rejected[0]["error"] and len(out.delivered) == 1
    assert st.outbox("key-1").status == "rejected"
    assert deliver(st, client).rejected == []
