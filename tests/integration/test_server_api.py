"""The fleet server's HTTP API on FastAPI's TestClient, on SQLite and PostgreSQL: the device loop, the
wire shapes the agent reads, idempotency, ranges, and bad input (4xx naming the field, nothing stored)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from arte import wire
from tests.support.server_support import Fleet, bad_report_cases, build_fleet

API = "/api/v1"


def error(resp, status: int, field: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "detail"}, body
    if field is not None:
        assert body["error"]["detail"].get("field") == field, body
    assert "Traceback" not in resp.text
    return body["error"]


def count(f: Fleet, table: str) -> int:
    import sqlalchemy as sa

    with f.engine.connect() as c:
        return c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_device_loop_reads_as_wire_messages(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort(k=2)
    dev_a, a = f.device(cohort)
    dev_b, b = f.device(cohort)
    me = wire.from_wire(wire.DeviceInfo, f.ok(f.client.get(f"{API}/devices/me", headers=a)))
    assert me.device_id == dev_a and me.cohort_id == cohort
    error(f.client.get(f"{API}/rounds/current", headers=a), 404)
    rnd = f.round(cohort, n_drafts=3)
    info = wire.from_wire(wire.RoundInfo, f.ok(f.client.get(f"{API}/rounds/current", headers=a)))
    assert (info.round_id, info.n_drafts, info.mode, info.privacy.mechanism) == (rnd, 3, "cot-choice", "none")
    drafts = wire.from_wire(wire.RoundDrafts, f.ok(f.client.get(f"{API}/rounds/{rnd}/drafts", headers=a)))
    assert [d["id"] for d in drafts.drafts] == ["d0", "d1", "d2"]

    receipt = wire.from_wire(
        wire.ReportReceipt, f.ok(f.report(rnd, a, [("d0", 10, 7), ("d1", 10, 2)], key="ka"))
    )
    assert not receipt.duplicate and receipt.n_scores == 2 and receipt.device_id == dev_a
    again = wire.from_wire(wire.ReportReceipt, f.ok(f.report(rnd, a, [("d0", 10, 7)], key="ka")))
    assert again.duplicate and again.report_id == receipt.report_id
    error(f.report(rnd, a, [("d0", 10, 7)], key="other"), 409, "idempotency_key")
    f.ok(f.report(rnd, b, [("d0", 30, 9), ("d2", 5, 5)]))

    agg = f.ok(f.client.get(f"{API}/aggregates/{rnd}", headers=f.admin))
    assert agg["n_devices"] == 2 and agg["meets_k"] is True
    assert agg["drafts"]["d0"]["score"] == pytest.approx(16 / 40)  # weighted by items, not by device
    assert agg["drafts"]["d0"]["n_devices"] == 2
    assert agg["drafts"]["d1"]["score"] == pytest.approx(0.2)
    per_device = f.ok(f.client.get(f"{API}/aggregates/{rnd}/devices", headers=f.admin))
    assert per_device[dev_a]["d0"]["score"] == pytest.approx(0.7) and per_device[dev_b]["d2"]["score"] == 1.0

    f.ok(f.client.post(f"{API}/rounds/{rnd}/close", headers=f.admin))
    error(f.report(rnd, a, [("d0", 1, 1)], key="late"), 409)  # a's stored report differs in key: still 409
    dup = f.ok(f.report(rnd, a, [("d0", 10, 7)], key="ka"))  # a re-send after close is still a duplicate
    assert dup["duplicate"] is True
    _, c = f.device(cohort)
    error(f.report(rnd, c, [("d0", 1, 1)]), 409, "round_id")

    error(f.client.get(f"{API}/datasets/latest", headers=a), 404)
    content = '{"input": "q1", "target": "a1"}\n{"input": "q2", "target": "a2"}\n'
    man = f.dataset(cohort, content)
    latest = wire.from_wire(wire.DatasetManifest, f.ok(f.client.get(f"{API}/datasets/latest", headers=a)))
    assert latest.sha256 == hashlib.sha256(content.encode()).hexdigest() == man["sha256"]
    assert (latest.size, latest.n_examples, latest.signature) == (len(content.encode()), 2, None)

    metrics = {
        "idempotency_key": "m1",
        "dataset_id": latest.dataset_id,
        "adapter_version": "v1",
        "before": {"zero_shot": 0.5, "three_shot": 0.55, "n_items": 40},
        "after": {"zero_shot": 0.6, "three_shot": 0.62, "n_items": 40},
        "kept": True,
        "train_seconds": 12.5,
    }
    m1 = wire.from_wire(wire.MetricsReceipt, f.ok(f.client.post(f"{API}/metrics", json=metrics, headers=a)))
    m2 = wire.from_wire(wire.MetricsReceipt, f.ok(f.client.post(f"{API}/metrics", json=metrics, headers=a)))
    assert not m1.duplicate and m2.duplicate and m1.metrics_id == m2.metrics_id
    mine = f.ok(f.client.get(f"{API}/metrics", headers=a))
    assert [m["metrics_id"] for m in mine] == [m1.metrics_id] and mine[0]["after"]["zero_shot"] == 0.6
    assert f.ok(f.client.get(f"{API}/metrics", headers=b)) == []


def test_dataset_range_etag_and_signature(backend, tmp_path) -> None:
    key = "11" * 32
    f = build_fleet(backend, tmp_path, dataset_signing_key=key)
    cohort = f.cohort()
    _, a = f.device(cohort)
    content = "".join(json.dumps({"input": f"q{i}", "target": "a"}) + "\n" for i in range(50))
    data = content.encode()
    man = f.dataset(cohort, content)
    expected = (
        "hmac-sha256:" + hmac.new(bytes.fromhex(key), man["sha256"].encode(), hashlib.sha256).hexdigest()
    )
    assert man["signature"] == expected
    url = f"{API}/datasets/{man['dataset_id']}/content"
    full = f.client.get(url, headers=a)
    assert full.status_code == 200 and full.content == data
    assert full.headers["etag"] == f'"{man["sha256"]}"' and full.headers["accept-ranges"] == "bytes"
    part = f.client.get(url, headers={**a, "Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == data[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(data)}"
    tail = f.client.get(url, headers={**a, "Range": f"bytes={len(data) - 5}-"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    suffix = f.client.get(url, headers={**a, "Range": "bytes=-7"})
    assert suffix.status_code == 206 and suffix.content == data[-7:]
    past = f.client.get(url, headers={**a, "Range": f"bytes={len(data)}-"})
    error(past, 416, "range")
    assert past.headers["content-range"] == f"bytes */{len(data)}"
    stale = f.client.get(url, headers={**a, "Range": "bytes=0-9", "If-Range": '"deadbeef"'})
    assert stale.status_code == 200 and stale.content == data
    assert f.client.get(url, headers={**a, "If-None-Match": full.headers["etag"]}).status_code == 304
    assert (
        f.client.get(url, headers={**a, "Range": "bytes=0-1,5-9"}).status_code == 200
    )  # multi-range: ignored
    f.client.close()
    f.engine.dispose()


@pytest.mark.parametrize("case", range(13))
def test_bad_reports_are_refused_naming_the_field(sqlite_fleet: Fleet, case: int) -> None:
    f = sqlite_fleet
    cohort = f.cohort()
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=2)
    name, body, status, field = bad_report_cases(["d0", "d1"])[case]
    error(f.client.post(f"{API}/rounds/{rnd}/reports", json=body, headers=a), status, field)
    assert count(f, "reports") == 0 and count(f, "report_scores") == 0, name


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_counts_are_refused(sqlite_fleet: Fleet, raw: str) -> None:
    f = sqlite_fleet
    cohort = f.cohort()
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=1)
    body = (
        '{"idempotency_key": "k", "mode": "cot-choice", "scores": [{"draft_id": "d0", "n_items": %s, '
        '"n_correct": 1}]}' % raw
    )
    error(
        f.client.post(
            f"{API}/rounds/{rnd}/reports", content=body, headers={**a, "Content-Type": "application/json"}
        ),
        422,
        "scores[0].n_items",
    )
    assert count(f, "reports") == 0


def test_noised_counts_are_accepted_under_declared_dp(sqlite_fleet: Fleet) -> None:
    f = sqlite_fleet
    cohort = f.cohort(k=1, privacy={"mechanism": "laplace", "epsilon": 1.0})
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=2)
    error(f.report(rnd, a, [("d0", 10, 5)]), 422, "privacy.mechanism")  # the round requires laplace
    dp = {"mechanism": "laplace", "epsilon": 1.0}
    error(f.report(rnd, a, [("d0", 9.3, 10.4)], privacy=dp), 422, "scores[0].n_items")  # items: in the clear
    f.ok(f.report(rnd, a, [("d0", 10, 10.4), ("d1", 10, -0.7)], privacy=dp))
    agg = f.ok(f.client.get(f"{API}/aggregates/{rnd}", headers=f.admin))
    assert agg["drafts"]["d0"]["n_correct"] == pytest.approx(10.4) and agg["drafts"]["d0"]["score"] == 1.0
    assert agg["drafts"]["d1"]["score"] == 0.0 and agg["drafts"]["d1"]["accuracy"] == pytest.approx(-0.07)


def test_malformed_json_oversized_and_wrong_content_type(tmp_path, sqlite_backend) -> None:
    f = build_fleet(sqlite_backend, tmp_path, max_body_bytes=2000)
    cohort = f.cohort()
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=1)
    url = f"{API}/rounds/{rnd}/reports"
    error(
        f.client.post(
            url, content=b'{"idempotency_key": ', headers={**a, "Content-Type": "application/json"}
        ),
        400,
        "body",
    )
    error(
        f.client.post(url, content=b"idempotency_key=k", headers={**a, "Content-Type": "text/plain"}),
        415,
        "content-type",
    )
    big = {
        "idempotency_key": "k",
        "mode": "cot-choice",
        "scores": [{"draft_id": "d0", "n_items": 1, "n_correct": 1}],
        "agent_version": "x" * 5000,
    }
    error(f.client.post(url, json=big, headers=a), 413, "body")

    def chunks():  # no Content-Length: the limit is enforced while streaming
        yield b'{"idempotency_key": "k", "agent_version": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    error(
        f.client.post(url, content=chunks(), headers={**a, "Content-Type": "application/json"}), 413, "body"
    )
    error(f.client.post(url, content=b"[]", headers={**a, "Content-Type": "application/json"}), 422)
    error(f.client.get(f"{API}/rounds/not-an-id/drafts", headers=a), 422, "round_id")
    error(f.client.get(f"{API}/no/such/route", headers=a), 404)
    error(f.client.delete(f"{API}/tasks", headers=f.admin), 405)
    assert count(f, "reports") == 0
    f.client.close()
    f.engine.dispose()


def test_enrollment_tokens_are_one_time_and_expire(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort()
    token = f.token(cohort, ttl_s=60)
    body = {"token": token, "device_name": "pi", "profile_id": "rpi5"}
    f.ok(f.client.post(f"{API}/enroll", json=body), 201)
    error(f.client.post(f"{API}/enroll", json=body), 401, "token")
    late = f.token(cohort, ttl_s=60)
    f.clock.advance(61)
    error(f.client.post(f"{API}/enroll", json={**body, "token": late}), 401, "token")
    error(f.client.post(f"{API}/enroll", json={**body, "token": token[:-3] + "AAA"}), 401, "token")
    error(f.client.post(f"{API}/enroll", json={**body, "token": "garbage"}), 401, "token")
    assert count(f, "devices") == 1


def test_revoked_device_key_is_refused(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort()
    dev, a = f.device(cohort)
    f.ok(f.client.get(f"{API}/devices/me", headers=a))
    f.ok(f.client.post(f"{API}/devices/{dev}/revoke", headers=f.admin))
    error(f.client.get(f"{API}/devices/me", headers=a), 401, "authorization")


def test_rate_limit_per_key(tmp_path, sqlite_backend) -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app

    f = build_fleet(sqlite_backend, tmp_path)
    now = [0.0]
    app = create_app(
        f.settings.model_copy(update={"rate_limit_per_s": 1.0, "rate_limit_burst": 3}),
        engine=f.engine,
        rate_clock=lambda: now[0],
    )
    c = TestClient(app, raise_server_exceptions=False)
    for _ in range(3):
        assert c.get(f"{API}/tasks", headers=f.admin).status_code == 200
    r = c.get(f"{API}/tasks", headers=f.admin)
    error(r, 429)
    assert r.headers["retry-after"] == "1"
    now[0] += 1.0
    assert c.get(f"{API}/tasks", headers=f.admin).status_code == 200
    c.close()
    f.engine.dispose()


def test_jobs_api_align_below_k_and_cancel(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort(k=2)
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=2)
    f.ok(f.report(rnd, a, [("d0", 10, 3)]))
    e = error(
        f.client.post(
            f"{API}/jobs", json={"kind": "align", "cohort_id": cohort, "round_id": rnd}, headers=f.admin
        ),
        409,
        "round_id",
    )
    assert e["type"] == "below_k" and e["detail"]["n_devices"] == 1 and e["detail"]["min_devices"] == 2
    error(
        f.client.post(f"{API}/jobs", json={"kind": "aggregate", "cohort_id": cohort}, headers=f.admin),
        400,
        "round_id",
    )
    job = f.ok(
        f.client.post(
            f"{API}/jobs", json={"kind": "aggregate", "cohort_id": cohort, "round_id": rnd}, headers=f.admin
        ),
        201,
    )
    assert job["state"] == "queued" and job["attempts"] == 0
    cancelled = f.ok(f.client.post(f"{API}/jobs/{job['job_id']}/cancel", headers=f.admin))
    assert cancelled["state"] == "cancelled"
    error(f.client.post(f"{API}/jobs/{job['job_id']}/cancel", headers=f.admin), 409)
    logs = f.ok(f.client.get(f"{API}/jobs/{job['job_id']}/logs", headers=f.admin))
    assert any("cancelled" in x["message"] for x in logs)


def test_openapi_documents_every_route(sqlite_fleet: Fleet) -> None:
    spec = sqlite_fleet.ok(sqlite_fleet.client.get(f"{API}/openapi.json"))
    paths = spec["paths"]
    for p in (
        "/api/v1/enroll",
        "/api/v1/rounds/{round_id}/reports",
        "/api/v1/datasets/{dataset_id}/content",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/aggregates/{round_id}",
    ):
        assert p in paths
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_unexpected_errors_are_500_without_a_stack_trace(sqlite_fleet: Fleet) -> None:
    from fastapi.testclient import TestClient

    app = sqlite_fleet.app

    @app.get("/api/v1/_boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/api/v1/_boom")
    e = error(r, 500)
    assert e["type"] == "internal" and "secret" not in r.text and "RuntimeError" not in r.text
