"""The device fast path answers and stores exactly what the routes do, on SQLite and PostgreSQL.

The same script of requests runs against two apps on two databases of one backend: one through the
routes only (``device_fast_path=False``: a transaction per request), one with the fast path
(:mod:`server.device_fast_path`: key cache, group-committed reports, read-only reads). Every answer (status,
headers, body) and every stored row must be the same, ids aside (each run's ids are numbered in the
order they appear). The script covers the drafts, report and manifest requests with valid and invalid
keys, bodies, rounds and cohorts, re-sends, closed rounds, local DP declarations, revocation through the
API, the rate limit, an oversized body and a device whose last contact is due. A spy on each app shows
which path answered, so the test cannot pass by both apps taking the routes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa

from tests.support.server_support import Backend, Fleet, Ids, bad_report_cases, build_fleet

API = "/api/v1"


class Recorder:
    """Sends requests to one fleet's app and keeps each answer with its ids numbered."""

    def __init__(self, f: Fleet) -> None:
        self.f = f
        self.ids = Ids()
        self.answers: list[tuple[str, int, dict[str, str], str]] = []

    def __call__(self, label: str, method: str, path: str, key: dict[str, str] | None = None,
                 body: Any = None, raw: bytes | None = None, ctype: str = "application/json") -> Any:
        headers = dict(key or {})
        content = raw
        if body is not None:
            content = json.dumps(body).encode()
        if content is not None:
            headers["Content-Type"] = ctype
        r = self.f.client.request(method, f"{API}{path}", content=content, headers=headers)
        self.answers.append((label, r.status_code, dict(r.headers), self.ids(r.text)))
        return r

    def rows(self) -> list[list[tuple[Any, ...]]]:
        """What the fleet's database holds of reports, scores and devices' state, ids numbered."""
        queries = [
            "SELECT id, round_id, device_id, idempotency_key, mode, privacy, agent_version, n_scores, "
            "received_at FROM reports",
            "SELECT report_id, draft_id, n_items, n_correct FROM report_scores",
            "SELECT id, last_seen_at, revoked_at FROM devices",
        ]
        with self.f.engine.connect() as c:
            return [
                sorted(tuple(self.ids(str(v)) for v in row) for row in c.execute(sa.text(q))) for q in queries
            ]


def _script(f: Fleet, send: Recorder) -> None:
    """Build a fleet through the admin API, then the device requests under test (see the docstring)."""
    c1 = f.cohort(k=1)
    c2 = f.cohort(k=1, privacy={"mechanism": "laplace", "epsilon": 1.0})
    (_, a), (_, b), (revoked, e) = f.device(c1), f.device(c1), f.device(c1)
    _, d = f.device(c2)
    r1, r2, r3 = f.round(c1, n_drafts=3), f.round(c2, n_drafts=2), f.round(c1, n_drafts=1)
    for name, key in (("a", a), ("b", b), ("d", d), ("e", e)):
        send(f"{name} me", "GET", "/devices/me", key)  # the routes: the key is then known to the cache
    unknown = "rnd_" + "0" * 32
    wrong = {"Authorization": a["Authorization"][:-4] + "AAAA"}
    garbage = {"Authorization": "Bearer arte_dk_" + "f" * 32 + "_nope"}

    def report(key: str, scores: list[tuple[str, float, float]], **kw: Any) -> dict[str, Any]:
        return {"idempotency_key": key, "mode": "cot-choice",
                "scores": [{"draft_id": d_, "n_items": n, "n_correct": c} for d_, n, c in scores], **kw}

    for label, path, key in [
        ("drafts first", f"/rounds/{r1}/drafts", a),
        ("drafts again", f"/rounds/{r1}/drafts", a),
        ("drafts b", f"/rounds/{r1}/drafts", b),
        ("other cohort's round", f"/rounds/{r1}/drafts", d),
        ("other cohort's round 2", f"/rounds/{r2}/drafts", a),
        ("unknown round", f"/rounds/{unknown}/drafts", a),
        ("malformed id", "/rounds/rnd_nope/drafts", a),
        ("id and a newline", f"/rounds/{r1}%0A/drafts", a),
        ("admin", f"/rounds/{r1}/drafts", f.admin),
        ("no key", f"/rounds/{r1}/drafts", None),
        ("wrong secret", f"/rounds/{r1}/drafts", wrong),
        ("unknown device", f"/rounds/{r1}/drafts", garbage),
        ("no manifest yet", "/datasets/latest", a),
    ]:
        send(label, "GET", path, key)

    url = f"/rounds/{r1}/reports"
    send("stored", "POST", url, a, report("ka", [("d0", 10, 7), ("d1", 10, 2)]))
    send("re-sent", "POST", url, a, report("ka", [("d0", 10, 7)]))
    send("other key", "POST", url, a, report("kz", [("d0", 10, 7)]))
    for name, body, _, _ in bad_report_cases(["d0", "d1"]):
        send(f"bad: {name}", "POST", url, b, body)
    send("b stored", "POST", url, b, report("kb", [("d0", 4, 4), ("d2", 4, 0)], agent_version="t/1"))
    send("unknown round", "POST", f"/rounds/{unknown}/reports", a, report("k1", [("d0", 1, 1)]))
    send("other cohort", "POST", url, d, report("k2", [("d0", 1, 1)]))
    send("malformed json", "POST", url, a, raw=b'{"idempotency_key": ')
    send("not json", "POST", url, a, raw=b"k=v", ctype="text/plain")
    send("empty body", "POST", url, a, raw=b"")
    send("array body", "POST", url, a, raw=b"[]")
    send("too large", "POST", url, a, report("big", [("d0", 1, 1)], agent_version="x" * 30_000))
    send("wrong secret, bad body", "POST", url, wrong, report("k3", []))
    send("wrong secret", "POST", url, wrong, report("k3", [("d0", 1, 1)]))
    send("unknown device", "POST", url, garbage, report("k3", [("d0", 1, 1)]))
    send("admin key", "POST", url, f.admin, report("k3", [("d0", 1, 1)]))
    send("malformed round id", "POST", "/rounds/rnd_x/reports", a, report("k3", [("d0", 1, 1)]))
    send("round id and a newline", "POST", f"/rounds/{r1}%0A/reports", a, report("k3", [("d0", 1, 1)]))

    dp = {"mechanism": "laplace", "epsilon": 1.0}
    url2 = f"/rounds/{r2}/reports"
    send("dp: undeclared", "POST", url2, d, report("kd", [("d0", 10, 5)]))
    send("dp: fractional items", "POST", url2, d, report("kd", [("d0", 9.5, 10.4)], privacy=dp))
    send("dp: looser", "POST", url2, d, report("kd", [("d0", 10, 5)], privacy={**dp, "epsilon": 2.0}))
    send("dp: stored", "POST", url2, d, report("kd", [("d0", 10, 10.4), ("d1", 10, -0.7)], privacy=dp))

    url3 = f"/rounds/{r3}/reports"
    send("r3 stored", "POST", url3, a, report("k3a", [("d0", 2, 1)]))
    f.ok(f.client.post(f"{API}/rounds/{r3}/close", headers=f.admin))
    send("closed", "POST", url3, b, report("k3b", [("d0", 2, 1)]))
    send("closed, re-sent", "POST", url3, a, report("k3a", [("d0", 2, 2)]))
    send("closed, other key", "POST", url3, a, report("k3x", [("d0", 2, 2)]))

    f.ok(f.client.post(f"{API}/devices/{revoked}/revoke", headers=f.admin))
    send("revoked: drafts", "GET", f"/rounds/{r1}/drafts", e)
    send("revoked: report", "POST", url, e, report("ke", [("d0", 1, 1)]))
    send("revoked: manifest", "GET", "/datasets/latest", e)

    f.dataset(c1, '{"input": "q", "target": "a"}\n')
    send("manifest", "GET", "/datasets/latest", a)
    send("manifest again", "GET", "/datasets/latest", b)
    send("no manifest for c2", "GET", "/datasets/latest", d)

    f.clock.advance(61)  # a contact is due: each request below must record it as the routes do
    send("due: drafts", "GET", f"/rounds/{r1}/drafts", a)
    send("due: re-sent", "POST", url, b, report("kb", [("d0", 4, 4)]))
    send("due: refused", "POST", url2, d, report("kd2", [("d0", 1, 1)]))  # no contact on an error
    send("after: drafts", "GET", f"/rounds/{r1}/drafts", a)
    send("after: manifest", "GET", "/datasets/latest", a)


def _spy(f: Fleet) -> dict[str, int]:
    """Count the fast path's work in ``f``'s app: report batches written and key cache hits."""
    counts = {"batches": 0, "cache hits": 0}
    writer, keys = f.app.state.report_writer, f.app.state.device_keys
    write, lookup = writer.write, keys.lookup

    def counting_write(reports: Any) -> Any:
        counts["batches"] += 1
        return write(reports)

    def counting_lookup(*args: Any) -> Any:
        known = lookup(*args)
        counts["cache hits"] += known is not None
        return known

    writer.write, keys.lookup = counting_write, counting_lookup
    return counts


def _run(backend: Backend, tmp_path: Path, script: Callable[[Fleet, Recorder], None],
         **settings: Any) -> tuple[Recorder, dict[str, int]]:
    f = build_fleet(backend, tmp_path, max_body_bytes=20_000, **settings)
    try:
        counts = _spy(f)
        send = Recorder(f)
        script(f, send)
        send.rows()  # numbered while the fleet is open
        return send, counts
    finally:
        f.client.close()
        f.engine.dispose()


def _compare(backend: Backend, other: Backend, tmp_path: Path,
             script: Callable[[Fleet, Recorder], None], **settings: Any) -> dict[str, int]:
    routes, counted_routes = _run(backend, tmp_path / "routes", script, device_fast_path=False, **settings)
    fast, counted_fast = _run(other, tmp_path / "fast", script, **settings)
    assert counted_routes == {"batches": 0, "cache hits": 0}
    for (label, *want), (_, *got) in zip(routes.answers, fast.answers, strict=True):
        assert got == want, label
    return counted_fast


def test_fast_path_answers_and_stores_what_the_routes_do(backend, other_backend, tmp_path) -> None:
    rows: dict[str, Any] = {}

    def script(f: Fleet, send: Recorder) -> None:
        _script(f, send)
        rows[f.backend.url + str(f.backend.schema)] = send.rows()

    counted = _compare(backend, other_backend, tmp_path, script)
    assert counted["batches"] >= 10 and counted["cache hits"] >= 8  # the fast path did answer
    routes_rows, fast_rows = rows.values()
    assert fast_rows == routes_rows
    assert len(routes_rows[0]) == 4 and len(routes_rows[1]) == 7  # reports, scores: the script's


def test_rate_limit_answers_are_the_same(backend, other_backend, tmp_path) -> None:
    from server.security import RateLimiter

    def script(f: Fleet, send: Recorder) -> None:
        c = f.cohort()
        _, a = f.device(c)
        rnd = f.round(c, n_drafts=1)
        f.app.state.limiter = RateLimiter(1.0, 4, clock=lambda: 0.0)  # from here: 4 requests, no refill
        body = {"idempotency_key": "k", "mode": "cot-choice",
                "scores": [{"draft_id": "d0", "n_items": 1, "n_correct": 1}]}
        send("me", "GET", "/devices/me", a)
        send("drafts", "GET", f"/rounds/{rnd}/drafts", a)
        send("report", "POST", f"/rounds/{rnd}/reports", a, body)
        send("manifest", "GET", "/datasets/latest", a)
        send("limited drafts", "GET", f"/rounds/{rnd}/drafts", a)
        send("limited report", "POST", f"/rounds/{rnd}/reports", a, body)
        send("limited bad report", "POST", f"/rounds/{rnd}/reports", a, {**body, "scores": []})
        send("limited manifest", "GET", "/datasets/latest", a)

    counted = _compare(backend, other_backend, tmp_path, script)
    assert counted["cache hits"] >= 2


def test_a_new_round_is_read_once_when_devices_pull_it_at_once(sqlite_fleet: Fleet, monkeypatch) -> None:
    import asyncio

    from server import fleet as fleet_state

    f = sqlite_fleet
    cohort = f.cohort()
    keys = [f.device(cohort)[1] for _ in range(8)]
    for key in keys:
        f.ok(f.client.get(f"{API}/devices/me", headers=key))  # the keys are now cached
    rnd = f.round(cohort, n_drafts=4)
    reads = []
    read = fleet_state.round_drafts

    def counting(*args: Any) -> Any:
        reads.append(args)
        return read(*args)

    monkeypatch.setattr(fleet_state, "round_drafts", counting)

    async def pull(key: dict[str, str]) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        path = f"{API}/rounds/{rnd}/drafts"
        headers = [(b"authorization", key["Authorization"].encode())]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("test", 80)}
        await f.app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    async def at_once() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(pull(key) for key in keys))

    answers = asyncio.run(at_once())
    assert len(reads) == 1
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1 and json.loads(answers[0][1])["round_id"] == rnd
