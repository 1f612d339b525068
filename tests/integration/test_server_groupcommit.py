"""Group commit (:mod:`server.groupcommit`) on SQLite and PostgreSQL: a batch of reports written in one
transaction gives each report the outcome it gets through the routes one at a time and stores the
same rows; one report the database refuses costs only itself; a database that cannot be reached
answers every report of the batch with 503 and stores nothing; a device revoked by another process
cannot store a report even while its key is cached for reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy import exc as sa_exc

from arte import wire
from server import report_store, responses, security
from server.errors import ApiError
from server.groupcommit import PendingReport
from server.schemas import ReportIn
from tests.support.server_support import Backend, Fleet, Ids, build_fleet

API = "/api/v1"


def _body(key: str, scores: list[tuple[str, float, float]]) -> dict[str, Any]:
    return {"idempotency_key": key, "mode": "cot-choice",
            "scores": [{"draft_id": d, "n_items": n, "n_correct": c} for d, n, c in scores]}


def _pending(f: Fleet, auth: dict[str, str], round_id: str, body: dict[str, Any]) -> PendingReport:
    parsed = security.parse_secret(auth["Authorization"].removeprefix("Bearer "), "dk")
    assert parsed is not None
    return PendingReport(parsed[0], parsed[1], round_id, ReportIn.model_validate(body), f.clock())


def _answer(outcome: Any) -> tuple[int, str]:
    """An outcome of the writer as the fast path sends it."""
    if isinstance(outcome, ApiError):
        r = responses.api_error_response(outcome)
        return r.status_code, bytes(r.body).decode()
    return 200, TypeAdapter(wire.ReportReceipt).dump_json(outcome).decode()


def _fleet_for_batch(f: Fleet) -> tuple[list[tuple[dict[str, str], str, dict[str, Any]]], list[Any]]:
    """A cohort, its devices and rounds, and a batch of reports covering every outcome."""
    c1, c2 = f.cohort(k=1), f.cohort(k=1)
    (_, a), (_, b), (gone, g) = f.device(c1), f.device(c1), f.device(c1)
    _, other = f.device(c2)
    r1, r2 = f.round(c1, n_drafts=3), f.round(c2, n_drafts=1)
    f.ok(f.report(r1, b, [("d0", 4, 1)], key="kb-old"))  # stored before the batch
    with f.engine.begin() as c:  # revoked "by another process": behind this app's back
        c.execute(sa.text("UPDATE devices SET revoked_at = :t WHERE id = :i"), {"t": f.clock(), "i": gone})
    wrong = {"Authorization": a["Authorization"][:-4] + "AAAA"}
    batch = [
        (a, r1, _body("ka", [("d0", 10, 7), ("d1", 10, 2)])),  # stored
        (a, r1, _body("ka", [("d0", 10, 7)])),  # a re-send of the report above, in the same batch
        (a, r1, _body("kz", [("d0", 10, 7)])),  # another key for it: 409
        (b, r1, _body("kb-old", [("d2", 1, 1)])),  # a re-send of a stored report
        (b, r1, _body("kb-new", [("d2", 1, 1)])),  # 409 against the stored one
        (other, r1, _body("ko", [("d0", 1, 1)])),  # another cohort's round: 404
        (other, r2, _body("ko", [("nope", 1, 1)])),  # a draft not in the round: 400
        (other, r2, _body("ko", [("d0", 1, 2)])),  # over-count: 400
        (other, r2, _body("ko", [("d0", 3, 2)])),  # stored (after two refusals of the same key)
        (g, r1, _body("kg", [("d0", 1, 1)])),  # revoked: 401, nothing stored
        (wrong, r1, _body("kw", [("d0", 1, 1)])),  # a wrong secret: 401
    ]
    return batch, [r1, r2]


def _stored(f: Fleet, ids: Ids) -> list[Any]:
    with f.engine.connect() as c:
        return [
            sorted(tuple(ids(str(v)) for v in row) for row in c.execute(sa.text(q)))
            for q in ("SELECT id, round_id, device_id, idempotency_key, n_scores, received_at FROM reports",
                      "SELECT report_id, draft_id, n_items, n_correct FROM report_scores",
                      "SELECT id, last_seen_at FROM devices")
        ]


def test_a_batch_answers_and_stores_what_the_routes_do_one_by_one(backend, other_backend, tmp_path) -> None:
    routes = build_fleet(backend, tmp_path / "routes", device_fast_path=False)
    batched = build_fleet(other_backend, tmp_path / "batched")
    try:
        one_by_one, ids_routes = [], Ids()
        batch, _ = _fleet_for_batch(routes)
        for auth, rnd, body in batch:
            r = routes.client.post(f"{API}/rounds/{rnd}/reports", json=body, headers=auth)
            one_by_one.append((r.status_code, ids_routes(r.text)))

        batch, _ = _fleet_for_batch(batched)
        commits = []
        sa.event.listen(batched.engine, "commit", lambda conn: commits.append(1))
        outcomes = batched.app.state.report_writer.write([_pending(batched, *x) for x in batch])
        ids_batched = Ids()
        together = [(status, ids_batched(text)) for status, text in map(_answer, outcomes)]

        assert len(commits) == 1  # one transaction for all eleven
        assert [s for s, _ in together] == [200, 200, 409, 200, 409, 404, 400, 400, 200, 401, 401]
        assert together == one_by_one
        assert _stored(batched, ids_batched) == _stored(routes, ids_routes)
    finally:
        for f in (routes, batched):
            f.client.close()
            f.engine.dispose()


def _poison(f: Fleet) -> None:
    """Make the database refuse any report with the idempotency key ``poison`` (as a constraint would)."""
    with f.engine.begin() as c:
        if f.backend.name == "sqlite":
            c.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON reports WHEN NEW.idempotency_key = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned report'); END"
            )
        else:
            c.exec_driver_sql(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.idempotency_key = 'poison' "
                "THEN RAISE EXCEPTION 'poisoned report'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            c.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON reports FOR EACH ROW EXECUTE FUNCTION poison()"
            )


def test_one_bad_report_in_a_batch_does_not_lose_the_others(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort(k=1)
    devices = [f.device(cohort)[1] for _ in range(5)]
    rnd = f.round(cohort, n_drafts=2)
    _poison(f)
    writer = f.app.state.report_writer
    sizes: list[int] = []
    write = writer.write

    def spy(reports: Any) -> Any:
        sizes.append(len(reports))
        return write(reports)

    writer.write = spy
    keys = ["k0", "k1", "poison", "k3", "k4"]
    scores = [("d0", 2, 1), ("d1", 2, 2)]
    pending = [_pending(f, auth, rnd, _body(k, scores)) for auth, k in zip(devices, keys)]

    async def at_once() -> list[Any]:  # all five queue before the first transaction starts
        return await asyncio.gather(*(writer.submit(p) for p in pending), return_exceptions=True)

    outcomes = asyncio.run(at_once())
    assert sizes == [5, 1, 1, 1, 1, 1]  # the batch failed as a whole, then each report alone
    assert isinstance(outcomes[2], sa_exc.DBAPIError) and "poisoned" in str(outcomes[2])
    receipts = [o for i, o in enumerate(outcomes) if i != 2]
    assert all(not r.duplicate and r.n_scores == 2 for r in receipts)
    with f.engine.connect() as c:
        stored = dict(c.execute(sa.text("SELECT idempotency_key, id FROM reports")).all())
        n_scores = c.execute(sa.text("SELECT count(*) FROM report_scores")).scalar_one()
    assert stored == {k: r.report_id for k, r in zip(["k0", "k1", "k3", "k4"], receipts)}
    assert n_scores == 8

    # through HTTP the refused report is a 500 that says nothing of the cause, on both paths
    for fast in (True, False):
        f.app.state.settings.device_fast_path = fast
        body = _body("poison", [("d0", 1, 1)])
        r = f.client.post(f"{API}/rounds/{rnd}/reports", json=body, headers=devices[2])
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal", r.text


def test_database_unavailable_answers_503_for_the_whole_batch(sqlite_fleet: Fleet, monkeypatch) -> None:
    f = sqlite_fleet
    cohort = f.cohort(k=1)
    devices = [f.device(cohort)[1] for _ in range(3)]
    rnd = f.round(cohort, n_drafts=1)
    writer = f.app.state.report_writer

    def down(reports: Any) -> Any:
        raise sa_exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(writer, "_write_batch", down)
    pending = [_pending(f, auth, rnd, _body(f"k{i}", [("d0", 1, 1)])) for i, auth in enumerate(devices)]
    outcomes = writer.write(pending)
    assert all(isinstance(o, sa_exc.OperationalError) for o in outcomes)
    r = f.client.post(f"{API}/rounds/{rnd}/reports", json=_body("k", [("d0", 1, 1)]), headers=devices[0])
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "database_unavailable"


def test_a_key_revoked_elsewhere_reads_for_the_cache_lifetime_and_never_writes(backend, tmp_path) -> None:
    f = build_fleet(backend, tmp_path, device_key_cache_s=5.0)
    try:
        cohort = f.cohort(k=1)
        dev, a = f.device(cohort)
        rnd = f.round(cohort, n_drafts=1)
        f.ok(f.client.get(f"{API}/rounds/{rnd}/drafts", headers=a))  # the routes: now cached
        with f.engine.begin() as c:  # `arte-server devices revoke` in another process
            c.execute(sa.text("UPDATE devices SET revoked_at = :t WHERE id = :i"), {"t": f.clock(), "i": dev})
        f.clock.advance(4.9)
        assert f.client.get(f"{API}/rounds/{rnd}/drafts", headers=a).status_code == 200  # within the TTL
        r = f.client.post(f"{API}/rounds/{rnd}/reports", json=_body("k", [("d0", 1, 1)]), headers=a)
        assert r.status_code == 401 and r.json()["error"]["detail"]["field"] == "authorization"
        # the refused report made the process forget the key: reads go to the database again
        assert f.client.get(f"{API}/rounds/{rnd}/drafts", headers=a).status_code == 401
        with f.engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM reports")).scalar_one() == 0
    finally:
        f.client.close()
        f.engine.dispose()


@pytest.mark.parametrize("advance", [5.0, 61.0])
def test_a_key_is_read_from_the_database_again_after_the_ttl_or_when_a_contact_is_due(
    sqlite_backend: Backend, tmp_path: Path, advance: float
) -> None:
    f = build_fleet(sqlite_backend, tmp_path, device_key_cache_s=5.0 if advance < 60 else 300.0)
    try:
        cohort = f.cohort(k=1)
        dev, a = f.device(cohort)
        rnd = f.round(cohort, n_drafts=1)
        f.ok(f.client.get(f"{API}/rounds/{rnd}/drafts", headers=a))
        with f.engine.begin() as c:
            c.execute(sa.text("UPDATE devices SET revoked_at = :t WHERE id = :i"), {"t": f.clock(), "i": dev})
        f.clock.advance(advance)
        assert f.client.get(f"{API}/rounds/{rnd}/drafts", headers=a).status_code == 401
        assert f.client.get(f"{API}/datasets/latest", headers=a).status_code == 401
    finally:
        f.client.close()
        f.engine.dispose()


def test_writer_answers_requests_of_several_event_loops(sqlite_fleet: Fleet) -> None:
    """The TestClient and uvicorn each run their own loop; the writer keeps one queue per loop."""
    f = sqlite_fleet
    cohort = f.cohort(k=1)
    devices = [f.device(cohort)[1] for _ in range(2)]
    rnd = f.round(cohort, n_drafts=1)
    writer = f.app.state.report_writer
    for i, auth in enumerate(devices):
        receipt = asyncio.run(writer.submit(_pending(f, auth, rnd, _body(f"k{i}", [("d0", 1, 1)]))))
        assert not receipt.duplicate
    assert json.loads(_answer(receipt)[1])["n_scores"] == 1


def test_sqlite_wal_is_checkpointed_beside_the_writes_not_by_them(sqlite_fleet: Fleet) -> None:
    """The writer starts a PASSIVE checkpoint in a worker thread after a batch when one is due, and the
    reports' answers do not wait for it; afterwards every committed WAL frame is in the database file."""
    f = sqlite_fleet
    cohort = f.cohort(k=1)
    devices = [f.device(cohort)[1] for _ in range(3)]
    rnd = f.round(cohort, n_drafts=1)
    writer = f.app.state.report_writer
    assert writer.checkpoint_every_s > 0
    writer.checkpoint_every_s = 0.0001  # due after every batch

    async def run() -> list[tuple[int, int, int]]:
        answers = []
        for i, auth in enumerate(devices):
            writer._checkpoint_due = 0.0
            receipt = await writer.submit(_pending(f, auth, rnd, _body(f"k{i}", [("d0", 1, 1)])))
            assert not receipt.duplicate
            assert writer._checkpointing is not None  # started after the batch, not awaited by it
            answers.append(await writer._checkpointing)
        return answers

    for busy, frames, done in asyncio.run(run()):  # each report's pages reached the database file
        assert busy == 0 and frames == done > 0
    with f.engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM report_scores").scalar_one() == 3


def test_sqlite_reads_a_batchs_stored_reports_by_index_not_by_scanning_the_table(sqlite_fleet: Fleet) -> None:
    """A batch reads the stored reports of its (device, round) pairs through the unique index: a scan
    costs time in proportion to every report ever stored (3 ms per batch at 20,000 reports)."""
    f = sqlite_fleet
    seen: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        seen.append((statement, params))

    keys = {("dev-a", "rnd-1"), ("dev-b", "rnd-1"), ("dev-a", "rnd-2")}
    sa.event.listen(f.engine, "before_cursor_execute", keep)
    try:
        with f.engine.connect() as c:
            assert report_store._read_stored(c, keys) == {}
            statement, params = seen[-1]
            plan = [row[3] for row in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)]
    finally:
        sa.event.remove(f.engine, "before_cursor_execute", keep)
    assert any("USING INDEX" in step for step in plan) and not any(step == "SCAN reports" for step in plan), plan


def test_concurrent_writers_store_each_report_once(fleet: Fleet) -> None:
    """Two transactions at a time (as two API processes write on PostgreSQL): copies of the same reports
    in concurrent batches are stored once, every copy gets that report's receipt, none fails (rows are
    written in key order, so the batches wait for each other and never deadlock)."""
    f = fleet
    cohort = f.cohort(k=1)
    devices = [f.device(cohort)[1] for _ in range(6)]
    rnd = f.round(cohort, n_drafts=2)
    writer = f.app.state.report_writer
    writer.writers, writer.max_batch = 2, 3

    async def run() -> list[Any]:
        sends = [
            writer.submit(_pending(f, auth, rnd, _body(f"k{i}", [("d0", 4, 1), ("d1", 4, 2)])))
            for _ in range(3)
            for i, auth in enumerate(devices)
        ]
        return await asyncio.gather(*sends)

    receipts = asyncio.run(run())
    by_device: dict[str, set[str]] = {}
    for r in receipts:
        by_device.setdefault(r.device_id, set()).add(r.report_id)
    assert len(by_device) == 6 and all(len(ids) == 1 for ids in by_device.values())
    assert sum(not r.duplicate for r in receipts) == 6
    with f.engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM reports").scalar_one() == 6
        assert c.exec_driver_sql("SELECT count(*) FROM report_scores").scalar_one() == 12
