"""``GET /api/v1/dashboard/summary`` and the static dashboard page, on SQLite and PostgreSQL: the
summary's numbers equal what the per-resource admin API says, it needs the admin key, ``limit`` cuts
the lists but never the totals, and the page and its assets carry no fleet data and a strict CSP."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support.dashboard_support import seed_fleet
from tests.support.server_support import Fleet

API = "/api/v1"


@pytest.fixture
def seeded(fleet: Fleet):
    return seed_fleet(fleet.client, fleet.admin, fleet.clock, fleet.settings, fleet.sessions)


def test_summary_matches_the_admin_api(fleet: Fleet, seeded) -> None:
    get = lambda path: fleet.ok(fleet.client.get(API + path, headers=fleet.admin))  # noqa: E731
    s = get("/dashboard/summary")
    cohorts, devices, rounds = get("/cohorts"), get("/devices"), get("/rounds")
    reports, jobs, datasets, metrics = get("/reports"), get("/jobs"), get("/datasets"), get("/metrics")

    assert s["generated_at"].startswith(fleet.clock.now.isoformat()[:19])
    t = s["totals"]
    assert (t["cohorts"], t["devices"], t["rounds"], t["reports"], t["jobs"], t["datasets"], t["metrics"]) == (
        len(cohorts), len(devices), len(rounds), len(reports), len(jobs), len(datasets), len(metrics)
    ) == (2, 5, 3, 7, 6, 3, 7)
    assert (t["devices_active"], t["devices_revoked"]) == (4, 1)
    assert t["rounds_open"] == sum(r["state"] == "open" for r in rounds) == 2
    assert t["dataset_bytes"] == sum(d["size"] for d in datasets)

    assert {c["cohort_id"]: c["n_devices"] for c in s["cohorts"]} == {c["cohort_id"]: c["n_devices"] for c in cohorts}
    assert {c["task_name"] for c in s["cohorts"]} == {"sports_understanding", "navigate"}
    assert {r["round_id"]: r["n_reports"] for r in s["rounds"]} == {r["round_id"]: r["n_reports"] for r in rounds}
    assert [r["round_id"] for r in s["rounds"]] == seeded.rounds  # oldest first
    by_device = Counter(r["device_id"] for r in reports)
    for d in s["devices"]:
        api_device = next(x for x in devices if x["device_id"] == d["device_id"])
        assert d["last_seen_at"] == api_device["last_seen_at"]
        assert d["revoked_at"] == api_device["revoked_at"]
        assert d["n_reports"] == by_device[d["device_id"]]
        assert d["n_metrics"] == sum(m["device_id"] == d["device_id"] for m in metrics)

    states = Counter(j["state"] for j in jobs)
    assert s["job_states"] == {st: states.get(st, 0) for st in ("queued", "running", "succeeded", "failed", "cancelled")}
    assert s["job_states"] == {"queued": 1, "running": 1, "succeeded": 2, "failed": 1, "cancelled": 1}
    kinds = Counter((j["kind"], j["state"]) for j in jobs)
    for kind, per_state in s["jobs_by_kind"].items():
        for state, n in per_state.items():
            assert n == kinds.get((kind, state), 0), (kind, state)
    failed = next(j for j in s["jobs"] if j["state"] == "failed")
    assert failed["kind"] == "tailor" and "no-teacher.gguf" in (failed["error"] or "")

    assert [p["metrics_id"] for p in s["accuracy"]] == [m["metrics_id"] for m in metrics]
    for p, m in zip(s["accuracy"], metrics):
        assert (p["before_zero_shot"], p["after_zero_shot"]) == (m["before"]["zero_shot"], m["after"]["zero_shot"])
        assert (p["before_three_shot"], p["after_three_shot"]) == (m["before"]["three_shot"], m["after"]["three_shot"])
        assert (p["kept"], p["n_items"], p["device_id"]) == (m["kept"], 40, m["device_id"])
    assert [d["dataset_id"] for d in s["datasets"]] == [d["dataset_id"] for d in datasets]
    assert set(seeded.datasets) == {d["dataset_id"] for d in datasets}
    assert not any(s["truncated"].values())


def test_limit_cuts_lists_not_totals(fleet: Fleet, seeded) -> None:
    s = fleet.ok(fleet.client.get(f"{API}/dashboard/summary?limit=2", headers=fleet.admin))
    assert s["limit"] == 2
    assert [r["round_id"] for r in s["rounds"]] == seeded.rounds[-2:]  # the newest two, oldest first
    assert len(s["devices"]) == len(s["jobs"]) == len(s["datasets"]) == len(s["accuracy"]) == 2
    assert s["truncated"] == {"devices": True, "rounds": True, "jobs": True, "datasets": True, "accuracy": True,
                              "campaigns": False}   # the seeded fleet has no campaign
    assert s["totals"]["devices"] == 5 and s["totals"]["jobs"] == 6
    for bad in ("0", "10001", "x"):
        r = fleet.client.get(f"{API}/dashboard/summary?limit={bad}", headers=fleet.admin)
        assert r.status_code == 422 and r.json()["error"]["detail"]["field"] == "limit", r.text


def test_summary_needs_the_admin_key(fleet: Fleet, seeded) -> None:
    device_headers = seeded.devices["pi5-kitchen"][1]
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer arte_ak_adm_00000000000000000000000000000000_nope"}, 401),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
        (device_headers, 403),
    ):
        r = fleet.client.get(f"{API}/dashboard/summary", headers=headers)
        assert r.status_code == status, r.text
        assert set(r.json()) == {"error"}
        assert "pi5-kitchen" not in r.text and "cohort" not in r.text.lower()


def test_empty_fleet_summary(fleet: Fleet) -> None:
    s = fleet.ok(fleet.client.get(f"{API}/dashboard/summary", headers=fleet.admin))
    assert set(s["totals"].values()) == {0}
    assert s["cohorts"] == s["devices"] == s["rounds"] == s["jobs"] == s["datasets"] == s["accuracy"] == []
    assert set(s["job_states"].values()) == {0}


def test_page_and_assets_hold_no_data_and_a_strict_csp(fleet: Fleet, seeded) -> None:
    page = fleet.client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    for asset, ctype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        r = fleet.client.get(f"/dashboard/{asset}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        assert "http://" not in r.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in r.text
    for body in (page.text, fleet.client.get("/dashboard/dashboard.js").text):
        for name in (*seeded.devices, *seeded.cohorts, *seeded.rounds):
            assert name not in body
    missing = fleet.client.get("/dashboard/secrets.txt")
    assert missing.status_code == 404 and missing.json()["error"]["detail"]["field"] == "name"


def test_openapi_documents_the_summary(fleet: Fleet) -> None:
    spec = fleet.ok(fleet.client.get(f"{API}/openapi.json"))
    op = spec["paths"][f"{API}/dashboard/summary"]["get"]
    assert op["tags"] == ["dashboard"]
    assert {"200", "401", "403"} <= set(op["responses"])
    assert any("HTTPBearer" in sec for sec in op.get("security", []))
    # the JSON API only: the Prometheus exposition and the page are not API operations
    assert "/metrics" not in spec["paths"] and "/dashboard" not in spec["paths"]
