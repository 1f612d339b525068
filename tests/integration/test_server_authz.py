"""Authorization matrix: every route refuses requests without a valid key; admin routes refuse device
keys; a device reaches only its own cohort's rounds, drafts and datasets and only its own reports and
metrics (others' are "not found", so their existence does not leak)."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.server_support import Fleet

API = "/api/v1"
PUBLIC = {
    ("GET", f"{API}/health"),
    ("POST", f"{API}/enroll"),
    ("GET", f"{API}/openapi.json"),
    ("GET", f"{API}/docs"),
    ("GET", f"{API}/docs/oauth2-redirect"),
}
DEVICE_ONLY = {
    ("GET", f"{API}/devices/me"),
    ("GET", f"{API}/rounds/current"),
    ("GET", f"{API}/datasets/latest"),
    ("POST", f"{API}/rounds/{{round_id}}/reports"),
    ("POST", f"{API}/metrics"),
}
SHARED = {
    ("GET", f"{API}/rounds/{{round_id}}/drafts"),
    ("GET", f"{API}/rounds/{{round_id}}/reports"),
    ("GET", f"{API}/reports"),
    ("GET", f"{API}/reports/{{report_id}}"),
    ("GET", f"{API}/metrics"),
    ("GET", f"{API}/metrics/{{metrics_id}}"),
    ("GET", f"{API}/datasets/{{dataset_id}}"),
    ("GET", f"{API}/datasets/{{dataset_id}}/content"),
}


def routes(app) -> list[tuple[str, str]]:
    """Every (method, path) the OpenAPI schema documents (FastAPI documents every API route)."""
    return sorted((m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops)


def concrete(path: str) -> str:
    return re.sub(
        r"\{(\w)\w*_id\}",
        lambda m: (
            {"r": "rnd", "d": "dat", "m": "met", "j": "job", "t": "tsk", "c": "coh"}.get(m.group(1), "dev")
            + "_"
            + "0" * 32
        ),
        path,
    )


def test_every_route_is_under_the_api_prefix(sqlite_fleet: Fleet) -> None:
    found = routes(sqlite_fleet.app)
    assert len(found) > 30
    for _method, path in found:
        assert path.startswith(API), path


def test_no_route_works_without_a_valid_key(sqlite_fleet: Fleet) -> None:
    f = sqlite_fleet
    bad_headers = [
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic dXNlcjpwdw=="},
        {"Authorization": "Bearer arte_dk_" + "0" * 32 + "_forged"},
        {"Authorization": f"Bearer {f.admin_key[:-2]}xx"},
    ]
    checked = 0
    for method, path in routes(f.app):
        if (method, path) in PUBLIC:
            continue
        for h in bad_headers:
            r = f.client.request(method, concrete(path), headers=h, json={} if method == "POST" else None)
            assert r.status_code == 401, (method, path, h, r.status_code, r.text)
            checked += 1
    assert checked > 100


def test_admin_routes_refuse_device_keys_and_device_routes_refuse_the_admin(sqlite_fleet: Fleet) -> None:
    f = sqlite_fleet
    cohort = f.cohort()
    _, dev = f.device(cohort)
    for method, path in routes(f.app):
        key = (method, path)
        if key in PUBLIC or key in SHARED:
            continue
        url = concrete(path)
        if key in DEVICE_ONLY:
            r = f.client.request(
                method, url, headers=f.admin, json=_valid_body(path) if method == "POST" else None
            )
            assert r.status_code == 403, (method, path, r.text)
        else:
            r = f.client.request(
                method, url, headers=dev, json=_admin_body(path, cohort) if method == "POST" else None
            )
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert r.json()["error"]["detail"]["field"] == "authorization"


def _valid_body(path: str) -> dict:
    if path.endswith("/reports"):
        return {
            "idempotency_key": "k",
            "mode": "cot-choice",
            "scores": [{"draft_id": "d0", "n_items": 1, "n_correct": 1}],
        }
    return {
        "idempotency_key": "k",
        "dataset_id": "dat_" + "0" * 32,
        "adapter_version": "v",
        "before": {"zero_shot": 0, "three_shot": 0, "n_items": 1},
        "after": {"zero_shot": 0, "three_shot": 0, "n_items": 1},
        "kept": False,
    }


def _admin_body(path: str, cohort: str) -> dict:
    return {
        "/api/v1/tasks": {"name": "t", "instruction": "i"},
        "/api/v1/cohorts": {
            "name": "c",
            "task_id": "tsk_" + "0" * 32,
            "student_model": "m",
            "profile_class": "p",
        },
        "/api/v1/tokens": {"cohort_id": cohort},
        "/api/v1/rounds": {
            "cohort_id": cohort,
            "drafts": [{"id": "x", "question": "q", "rationale": "r", "answer": "a"}],
        },
        "/api/v1/jobs": {"kind": "aggregate", "cohort_id": cohort},
        "/api/v1/datasets": {"cohort_id": cohort, "content": "{}\n", "teacher": "t"},
    }.get(path, {})


def test_devices_see_only_their_cohort_and_their_own_results(fleet: Fleet) -> None:
    f = fleet
    c1, c2 = f.cohort(), f.cohort()
    dev_a, a = f.device(c1)
    dev_b, b = f.device(c1)
    _, x = f.device(c2)  # another cohort
    r1, r2 = f.round(c1), f.round(c2)
    rep_a = f.ok(f.report(r1, a, [("d0", 4, 1)]))["report_id"]
    rep_b = f.ok(f.report(r1, b, [("d0", 4, 3)]))["report_id"]
    ds1 = f.dataset(c1)["dataset_id"]
    ds2 = f.dataset(c2)["dataset_id"]
    met = {
        "idempotency_key": "m",
        "dataset_id": ds1,
        "adapter_version": "v",
        "kept": True,
        "before": {"zero_shot": 0.1, "three_shot": 0.1, "n_items": 5},
        "after": {"zero_shot": 0.2, "three_shot": 0.2, "n_items": 5},
    }
    met_a = f.ok(f.client.post(f"{API}/metrics", json=met, headers=a))["metrics_id"]

    def status(method: str, url: str, h: dict, **kw) -> int:
        return f.client.request(method, url, headers=h, **kw).status_code

    # another cohort's round, drafts, reports, datasets: not found
    assert status("GET", f"{API}/rounds/{r2}/drafts", a) == 404
    assert status("GET", f"{API}/rounds/{r2}/reports", a) == 404
    assert f.report(r2, a, [("d0", 1, 1)]).status_code == 404
    assert status("GET", f"{API}/datasets/{ds2}", a) == 404
    assert status("GET", f"{API}/datasets/{ds2}/content", a) == 404
    assert f.ok(f.client.get(f"{API}/datasets/latest", headers=x))["dataset_id"] == ds2
    assert f.ok(f.client.get(f"{API}/rounds/current", headers=x))["round_id"] == r2
    met_x = {**met, "dataset_id": ds1}
    assert status("POST", f"{API}/metrics", x, json=met_x) == 404  # metrics for another cohort's data
    # another device's report and metrics: not found / not listed
    assert status("GET", f"{API}/reports/{rep_b}", a) == 404
    assert status("GET", f"{API}/reports/{rep_a}", a) == 200
    assert [r["report_id"] for r in f.ok(f.client.get(f"{API}/reports", headers=a))] == [rep_a]
    assert [r["report_id"] for r in f.ok(f.client.get(f"{API}/reports?device_id={dev_b}", headers=a))] == [
        rep_a
    ]
    assert [r["report_id"] for r in f.ok(f.client.get(f"{API}/rounds/{r1}/reports", headers=a))] == [rep_a]
    assert status("GET", f"{API}/metrics/{met_a}", b) == 404
    assert f.ok(f.client.get(f"{API}/metrics?device_id={dev_a}", headers=b)) == []
    # device B cannot write for A: a report is always the caller's own (A's stored report is untouched)
    assert f.report(r1, b, [("d0", 9, 9)], key="other").status_code == 409
    stored = f.ok(f.client.get(f"{API}/reports/{rep_a}", headers=f.admin))
    assert stored["device_id"] == dev_a and stored["scores"] == [
        {"draft_id": "d0", "n_items": 4.0, "n_correct": 1.0}
    ]
    # the admin sees everything
    assert len(f.ok(f.client.get(f"{API}/reports", headers=f.admin))) == 2
    assert status("GET", f"{API}/rounds/{r2}/drafts", f.admin) == 200
    assert len(f.ok(f.client.get(f"{API}/aggregates/{r1}/devices", headers=f.admin))) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/aggregates/{r}",
        "/api/v1/aggregates/{r}/devices",
        "/api/v1/devices/{d}/reports",
        "/api/v1/rounds/{r}",
    ],
)
def test_per_device_and_admin_views_refuse_devices(sqlite_fleet: Fleet, path: str) -> None:
    f = sqlite_fleet
    cohort = f.cohort()
    dev, a = f.device(cohort)
    rnd = f.round(cohort)
    assert f.client.get(path.format(r=rnd, d=dev), headers=a).status_code == 403
    assert f.client.get(path.format(r=rnd, d=dev), headers=f.admin).status_code == 200


def test_no_device_reads_another_devices_scores_or_any_aggregate(fleet: Fleet) -> None:
    """Device A's noised counts (distinctive numbers) appear in no response to device B, whatever B asks
    for among the routes a device may use; every aggregate/estimate route refuses both devices."""
    f = fleet
    privacy = {"mechanism": "laplace", "epsilon": 1.0}
    cohort = f.cohort(k=1, privacy=privacy)
    dev_a, a = f.device(cohort)
    dev_b, b = f.device(cohort)
    rnd = f.round(cohort, n_drafts=2)
    secret = (3.1415926, -2.7182818)
    rep_a = f.ok(f.report(rnd, a, [("d0", 10, secret[0]), ("d1", 10, secret[1])], privacy=privacy))
    rep_b = f.ok(f.report(rnd, b, [("d0", 10, 4.25), ("d1", 10, 6.5)], privacy=privacy))
    ds = f.dataset(cohort)["dataset_id"]
    job = f.ok(
        f.client.post(
            f"{API}/jobs", json={"kind": "aggregate", "cohort_id": cohort, "round_id": rnd}, headers=f.admin
        ),
        201,
    )
    from server.worker import Worker

    Worker(f.settings, f.sessions, worker_id="w", clock=f.clock, heartbeat_thread=False).run_once()
    assert f.ok(f.client.get(f"{API}/jobs/{job['job_id']}", headers=f.admin))["state"] == "succeeded"
    ids = {
        "round_id": rnd,
        "report_id": rep_b["report_id"],
        "dataset_id": ds,
        "device_id": dev_b,
        "metrics_id": "met_" + "0" * 32,
    }
    device_gets = sorted(p for m, p in (DEVICE_ONLY | SHARED) if m == "GET")
    assert len(device_gets) >= 9
    for path in device_gets:
        r = f.client.get(path.format(**ids), headers=b)
        assert r.status_code in (200, 206, 404), (path, r.status_code)
        for value in secret:
            assert repr(value) not in r.text and f"{value:g}" not in r.text, (path, r.text)
    assert f.client.get(f"{API}/reports/{rep_a['report_id']}", headers=b).status_code == 404
    aggregate_routes = [p for m, p in routes(f.app) if m == "GET" and p.startswith(f"{API}/aggregates")]
    assert len(aggregate_routes) >= 3
    for path in aggregate_routes:
        for h in (a, b):
            r = f.client.get(path.format(round_id=rnd), headers=h)
            assert r.status_code == 403 and r.json()["error"]["detail"]["field"] == "authorization", path
            assert "3.14" not in r.text and "n_correct" not in r.text
        shown = f.ok(f.client.get(path.format(round_id=rnd), headers=f.admin))
        assert "noise_variance" in json.dumps(shown), path  # the admin does see the estimates
    per_device = f.ok(f.client.get(f"{API}/aggregates/{rnd}/devices", headers=f.admin))
    assert per_device[dev_a]["d0"]["n_correct"] == secret[0]
