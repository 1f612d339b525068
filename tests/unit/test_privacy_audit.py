"""The wire-audit helper itself: it must catch every kind of leak it promises, and pass clean traffic."""

from __future__ import annotations

import gzip
import hashlib
import json
from urllib.parse import quote

import httpx
import pytest

from arte.tasks import Example, load_task
from tests.support.privacy_audit import (
    RecordingTransport,
    SentRequest,
    assert_no_leaks,
    find_leaks,
    needles_for,
)

ITEMS = (
    Example("clinic:17", "Dr. Élodie Brandt prescribed amoxicillin to the patient in room twelve on Tuesday",
            ("plausible",), ("plausible", "implausible")),
    Example("clinic:18", "The nurse checked the ventilator settings twice before the night shift",
            ("implausible",), ("plausible", "implausible")),
    Example("sort:3", "Sort the following words alphabetically: List: zebra mango apple kiwi",
            ("apple kiwi mango zebra",)),
    Example("count:9", "I have a flute, a piano and a drum. How many instruments do I have?", ("three",)),
    Example("count:10", "I have two cats and a dog. How many animals do I have?", ("three",)),
)
CLEAN_REPORT = json.dumps({"idempotency_key": "0b5e9d0c-5d2f-4a55-9a3f-6c1f6a4f4f3e", "mode": "loglik",
                           "scores": [{"draft_id": "sport-q0-r0", "n_items": 20.0, "n_correct": 7.31}],
                           "privacy": {"mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-06},
                           "agent_version": "0.1.0"}).encode()
HEADERS = (("Authorization", "Bearer dk_3f9a8b7c6d5e"), ("Content-Type", "application/json"),
           ("User-Agent", "edge-agent/0.1.0"))


def _kinds(leaks):
    return {(x.needle.kind, x.needle.item_id) for x in leaks}


def test_clean_report_passes():
    req = SentRequest("POST", "http://127.0.0.1:8000/api/v1/rounds/r1/reports", HEADERS, CLEAN_REPORT)
    assert find_leaks([req], ITEMS) == []
    assert_no_leaks([req, b"", "GET /api/v1/rounds/current"], ITEMS)


def test_full_item_text_in_a_json_body_is_caught():
    body = json.dumps({"scores": [], "debug": ITEMS[0].input}).encode()
    assert ("text", "clinic:17") in _kinds(find_leaks([body], ITEMS))


def test_a_five_word_window_hidden_by_json_escapes_is_caught():
    # ensure_ascii escapes the É; the window also spans a line break inside the JSON string.
    note = "seen: Dr. Élodie Brandt\nprescribed amoxicillin ..."
    body = json.dumps({"note": note}, ensure_ascii=True).encode()
    assert b"\\u00c9" in body and b"\\n" in body
    leaks = find_leaks([body], ITEMS)
    assert ("window", "clinic:17") in _kinds(leaks)
    assert {x.view for x in leaks} == {"json"}


def test_four_words_are_not_a_window_but_five_are():
    assert find_leaks([b'{"x": "checked the ventilator settings"}'], ITEMS) == []
    assert find_leaks([b'{"x": "the ventilator settings"}'], ITEMS, window_words=3)


def test_leaks_in_urls_headers_and_gzip_bodies_are_caught():
    url = "http://h/api/v1/search?q=" + quote("nurse checked the ventilator settings twice")
    hdr = (("X-Debug", "I have two cats and a dog"),)
    gz = gzip.compress(json.dumps({"x": ITEMS[0].input}).encode())
    leaks = find_leaks([SentRequest("GET", url), SentRequest("GET", "http://h/", hdr),
                        SentRequest("POST", "http://h/", (), gz)], ITEMS)
    where = {(x.request, x.part, x.needle.item_id) for x in leaks}
    assert (0, "url", "clinic:18") in where
    assert (1, "header:X-Debug", "count:10") in where
    assert (2, "body", "clinic:17") in where
    assert any(x.view.startswith("gunzip/") for x in leaks if x.request == 2)


def test_item_ids_and_their_hashes_are_caught_with_boundaries():
    assert ("id", "clinic:17") in _kinds(find_leaks([b'{"item": "clinic:17"}'], ITEMS))
    assert find_leaks([b'{"item": "clinic:170"}'], ITEMS) == []   # another id, not this one
    digest = hashlib.sha256(b"count:9").hexdigest()
    assert ("hash", "count:9") in _kinds(find_leaks([json.dumps({"k": digest.upper()}).encode()], ITEMS))
    text_digest = hashlib.sha256(ITEMS[1].input.encode()).hexdigest()
    assert ("hash", "clinic:18") in _kinds(find_leaks([text_digest.encode()], ITEMS))


def test_only_distinctive_answers_count():
    kinds = _kinds(find_leaks([b'{"answer": "apple kiwi mango zebra"}'], ITEMS))
    assert ("answer", "sort:3") in kinds
    # "plausible"/"implausible" are every item's options and "three" answers two items: they name no item.
    assert find_leaks([b'{"labels": ["plausible", "implausible", "three"]}'], ITEMS) == []
    answers = {n.text.strip() for n in needles_for(ITEMS) if n.kind == "answer"}
    assert answers == {"apple kiwi mango zebra"}


def test_public_text_is_not_a_leak():
    draft = "Question: The nurse checked the ventilator settings twice before leaving. <ans>plausible</ans>"
    body = json.dumps({"echo": "nurse checked the ventilator settings twice"}).encode()
    assert find_leaks([body], ITEMS)
    assert find_leaks([body], ITEMS, public=[draft]) == []


def test_assert_no_leaks_reports_what_and_where():
    with pytest.raises(AssertionError) as e:
        assert_no_leaks([CLEAN_REPORT, json.dumps({"x": ITEMS[3].input}).encode()], ITEMS)
    msg = str(e.value)
    assert "request 1 body" in msg and "count:9" in msg and "of 5 items" in msg


def test_recording_transport_records_what_httpx_sends():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True})

    rec = RecordingTransport(httpx.MockTransport(handler))
    with httpx.Client(transport=rec, base_url="http://server") as client:
        client.post("/api/v1/rounds/r1/reports", json=json.loads(CLEAN_REPORT),
                    headers={"Authorization": "Bearer k"})
        client.post("/api/v1/rounds/r1/reports", json={"oops": ITEMS[2].input})
    assert [r.method for r in rec.requests] == ["POST", "POST"]
    assert rec.requests[0].url == "http://server/api/v1/rounds/r1/reports"
    assert ("authorization", "Bearer k") in rec.requests[0].headers
    leaks = find_leaks(rec.requests, ITEMS)
    assert {x.request for x in leaks} == {1}


def test_real_bigbench_items_are_caught_and_clean_traffic_passes(bigbench_dir):
    """On real private items (navigate's texts share many windows): a clean report passes; leaking any
    one item, even just a window of it, is caught."""
    items = load_task(bigbench_dir / "navigate.json").examples[:40]
    assert_no_leaks([SentRequest("POST", "http://h/api/v1/rounds/r/reports", HEADERS, CLEAN_REPORT)], items)
    for e in items[::7]:
        words = e.input.split()
        window = " ".join(words[len(words) // 2: len(words) // 2 + 5])
        assert find_leaks([json.dumps({"x": window}).encode()], items), e.id
