"""Local DP wired into the fleet server, on SQLite and PostgreSQL: a cohort's privacy policy and k, rounds
that inherit it (or are stricter), reports whose declaration must be at least as strict (422 naming the
field, nothing stored), unbiased estimates with variance and 95% interval in the aggregate endpoints, and
the k-threshold (``arte.privacy.cohort_threshold``) wherever scores may drive alignment."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from arte import wire
from arte.privacy import calibrate, privatize
from server import job_handlers
from server.errors import JobError
from server.worker import Worker
from tests.support.server_support import Fleet

API = "/api/v1"
GAUSS = {"mechanism": "gaussian", "epsilon": 2.0, "delta": 1e-6}
RR = {"mechanism": "randomized_response", "epsilon": 4.0}


def error(resp: Any, status: int, field: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    e = resp.json()["error"]
    assert e["detail"].get("field") == field, e
    return e


def n_reports(f: Fleet) -> int:
    import sqlalchemy as sa

    with f.engine.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM reports")).scalar_one()


def test_cohort_policy_is_validated_and_inherited_by_rounds(fleet: Fleet) -> None:
    f = fleet
    task = f.task()
    base = {"task_id": task, "student_model": "default", "profile_class": "laptop-cpu"}
    for n, (privacy, field) in enumerate(
        [
            (
                {"mechanism": "laplace", "epsilon": 1.0, "delta": 1e-6},
                "privacy.delta",
            ),  # pure-epsilon mechanism
            ({"mechanism": "gaussian", "epsilon": 1.0}, "privacy.delta"),  # needs delta > 0
            ({"mechanism": "none", "epsilon": 1.0}, "privacy.epsilon"),  # no noise, no epsilon
            ({"mechanism": "randomized_response"}, "privacy.epsilon"),
            ({"mechanism": "laplace", "epsilon": 0.0}, "privacy.epsilon"),
        ]
    ):
        r = f.client.post(
            f"{API}/cohorts", json={**base, "name": f"bad{n}", "privacy": privacy}, headers=f.admin
        )
        error(r, 422, field)
    cohort = f.cohort(k=2, privacy=GAUSS)
    shown = f.ok(f.client.get(f"{API}/cohorts/{cohort}", headers=f.admin))
    assert shown["privacy"] == GAUSS and shown["min_devices"] == 2
    _, a = f.device(cohort)
    rnd = f.round(cohort)
    info = wire.from_wire(wire.RoundInfo, f.ok(f.client.get(f"{API}/rounds/current", headers=a)))
    assert info.round_id == rnd and info.privacy == wire.PrivacyInfo("gaussian", 2.0, 1e-6)
    # a round may be stricter than its cohort, never looser
    stricter = f.round(cohort, privacy={**GAUSS, "epsilon": 1.0, "delta": 1e-7})
    assert f.ok(f.client.get(f"{API}/rounds/{stricter}", headers=f.admin))["privacy"]["epsilon"] == 1.0
    body = {"cohort_id": cohort, "drafts": [{"id": "x", "question": "q", "rationale": "r", "answer": "a"}]}
    for privacy, field in [
        ({**GAUSS, "epsilon": 4.0}, "privacy.epsilon"),
        ({**GAUSS, "delta": 1e-3}, "privacy.delta"),
        ({"mechanism": "laplace", "epsilon": 1.0}, "privacy.mechanism"),
        ({"mechanism": "none"}, "privacy.mechanism"),
    ]:
        error(f.client.post(f"{API}/rounds", json={**body, "privacy": privacy}, headers=f.admin), 422, field)


def test_reports_must_declare_at_least_the_rounds_privacy(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort(k=1, privacy=GAUSS)
    _, a = f.device(cohort)
    rnd = f.round(cohort, n_drafts=2)
    scores = [("d0", 10, 6.3), ("d1", 10, -1.2)]
    for privacy, field in [
        (None, "privacy.mechanism"),  # no DP on a DP round
        ({"mechanism": "laplace", "epsilon": 2.0}, "privacy.mechanism"),
        ({**GAUSS, "epsilon": 2.5}, "privacy.epsilon"),  # looser than the round
        ({**GAUSS, "delta": 1e-5}, "privacy.delta"),
    ]:
        kw = {"privacy": privacy} if privacy else {}
        e = error(f.report(rnd, a, scores, **kw), 422, field)
        assert e["detail"]["required"] == GAUSS
    error(f.report(rnd, a, [("d0", 10, 6.3), ("d1", 10.5, 3)], privacy=GAUSS), 422, "scores[1].n_items")
    assert n_reports(f) == 0
    f.ok(f.report(rnd, a, scores, privacy={**GAUSS, "epsilon": 1.5}))  # stricter is fine
    assert n_reports(f) == 1

    rr_cohort = f.cohort(k=1, privacy=RR)
    _, b = f.device(rr_cohort)
    rr_round = f.round(rr_cohort, n_drafts=2)
    error(f.report(rr_round, b, [("d0", 10, 6), ("d1", 10, 2.5)], privacy=RR), 422, "scores[1].n_correct")
    error(f.report(rr_round, b, [("d0", 10, 11), ("d1", 10, 2)], privacy=RR), 422, "scores[0].n_correct")
    error(f.report(rr_round, b, [("d0", 10, -1), ("d1", 10, 2)], privacy=RR), 422, "scores[0].n_correct")
    tiny = {"mechanism": "randomized_response", "epsilon": 1e-300}  # noise that cannot be inverted
    free = f.cohort(k=1)
    _, c = f.device(free)
    free_round = f.round(free, n_drafts=1)
    error(f.report(free_round, c, [("d0", 10, 5)], privacy=tiny), 422, "privacy.epsilon")
    assert n_reports(f) == 1
    # a round without a requirement accepts exact counts, and a device that chooses to add noise
    f.ok(f.report(free_round, c, [("d0", 10, 5.5)], privacy={"mechanism": "laplace", "epsilon": 1.0}))


def test_aggregate_endpoints_expose_unbiased_estimates_with_intervals(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort(k=3, privacy=RR)
    rnd = f.round(cohort, n_drafts=3)
    rng = np.random.default_rng(5)
    truth = np.array([0.85, 0.5, 0.3])
    devices = []
    for i in range(12):
        dev, h = f.device(cohort)
        devices.append(dev)
        n_drafts = 3 if i < 2 else 2  # d2 is scored by two devices only: below k
        outcomes = (rng.random((n_drafts, 30)) < truth[:n_drafts, None]).astype(np.int8)
        counts = privatize(outcomes, calibrate("randomized_response", 4.0, 0.0, n_drafts), rng)
        f.ok(f.report(rnd, h, [(f"d{j}", 30, float(c)) for j, c in enumerate(counts)], privacy=RR))
    agg = f.ok(f.client.get(f"{API}/aggregates/{rnd}", headers=f.admin))
    assert agg["n_devices"] == 12 and agg["may_align"] is True and agg["meets_k"] is True
    assert agg["excluded"] == {} and "2 of 3 drafts" in agg["reason"]
    for j, t in enumerate(truth):
        d = agg["drafts"][f"d{j}"]
        assert d["ci_low"] < t < d["ci_high"] and d["variance"] > d["noise_variance"] > 0
        assert d["ci_high"] - d["ci_low"] == pytest.approx(2 * 1.96 * d["variance"] ** 0.5)
    assert [agg["drafts"][d]["eligible"] for d in ("d0", "d1", "d2")] == [True, True, False]
    assert agg["drafts"]["d2"]["n_devices"] == 2
    naive = f.ok(f.client.get(f"{API}/aggregates/{rnd}/devices", headers=f.admin))
    raw = [
        s["n_correct"]
        for r in f.ok(f.client.get(f"{API}/rounds/{rnd}/reports", headers=f.admin))
        for s in r["scores"]
        if s["draft_id"] == "d0"
    ]
    counted = sum(raw) / (30 * len(raw))  # counting the noisy bits is biased towards 1/2
    assert abs(agg["drafts"]["d0"]["accuracy"] - truth[0]) < truth[0] - counted

    per_device = naive
    assert set(per_device) == set(devices) and per_device[devices[0]]["d0"]["noise_variance"] > 0

    job = f.ok(
        f.client.post(
            f"{API}/jobs", json={"kind": "aggregate", "cohort_id": cohort, "round_id": rnd}, headers=f.admin
        ),
        201,
    )
    Worker(f.settings, f.sessions, worker_id="w", clock=f.clock, heartbeat_thread=False).run_once()
    assert f.ok(f.client.get(f"{API}/jobs/{job['job_id']}", headers=f.admin))["result"]["may_align"] is True
    stored = f.ok(f.client.get(f"{API}/aggregates/{rnd}/stored", headers=f.admin))
    assert (
        stored["drafts"] == agg["drafts"]
        and stored["may_align"] is True
        and stored["reason"] == agg["reason"]
    )
    assert stored["excluded"] is None


def test_align_needs_k_devices_on_a_draft_and_pairs_use_only_those_drafts(fleet: Fleet, monkeypatch) -> None:
    f = fleet
    cohort = f.cohort(k=2)
    rnd = f.round(cohort, n_drafts=3)
    a_id, a = f.device(cohort)
    b_id, b = f.device(cohort)
    f.ok(f.report(rnd, a, [("d0", 10, 9), ("d1", 10, 2)]))
    f.ok(f.report(rnd, b, [("d2", 10, 5)]))
    job = {"kind": "align", "cohort_id": cohort, "round_id": rnd}
    e = error(f.client.post(f"{API}/jobs", json=job, headers=f.admin), 409, "round_id")
    assert e["type"] == "below_k" and "no draft was scored by 2" in e["message"]
    agg = f.ok(f.client.get(f"{API}/aggregates/{rnd}", headers=f.admin))
    assert agg["meets_k"] is True and agg["may_align"] is False

    f.ok(f.client.post(f"{API}/rounds/{rnd}/close", headers=f.admin))  # (closing does not matter here)
    rnd = f.round(cohort, n_drafts=3)
    f.ok(f.report(rnd, a, [("d0", 10, 9), ("d1", 10, 2)]))
    f.ok(f.report(rnd, b, [("d0", 10, 7), ("d2", 10, 5)]))
    seen: dict[str, Any] = {}

    def select_pairs(task, drafts, scores, seeds, config):  # records what alignment would be built from
        seen.update(drafts=[d.id for d in drafts], scores=dict(scores))
        raise JobError("stop after the pairs' inputs", retry=False)

    monkeypatch.setattr(job_handlers, "select_pairs", select_pairs)   # where the align job looks it up
    made = f.ok(f.client.post(f"{API}/jobs", json={**job, "round_id": rnd}, headers=f.admin), 201)
    Worker(f.settings, f.sessions, worker_id="w", clock=f.clock, heartbeat_thread=False).run_once()
    assert (
        "stop after the pairs' inputs"
        in f.ok(f.client.get(f"{API}/jobs/{made['job_id']}", headers=f.admin))["error"]
    )
    # as arte.pairs reads them: the pooled 20 items at the pooled score 0.8 with its pooled (binomial)
    # variance, scored by devices a and b
    assert seen["drafts"] == ["d0"] and list(seen["scores"]) == ["d0"]
    est = seen["scores"]["d0"]
    assert (est.n_items, est.score, est.variance) == (20.0, pytest.approx(0.8), pytest.approx(0.8 * 0.2 / 20))
    assert est.unit == ",".join(sorted([a_id, b_id]))


def test_aggregates_stored_before_estimates_existed_still_read(fleet: Fleet) -> None:
    from server import db
    from server.tables import Aggregate, new_id

    f = fleet
    cohort = f.cohort(k=2)
    rnd = f.round(cohort, n_drafts=2)
    legacy = {  # the shape stored before local DP estimates were wired in
        "d0": {"n_devices": 2, "n_items": 20.0, "n_correct": 5.0, "score": 0.25},
        "d1": {"n_devices": 1, "n_items": 10.0, "n_correct": 9.0, "score": 0.9},
    }
    with db.transaction(f.sessions) as s:
        s.add(
            Aggregate(
                id=new_id("agg"),
                cohort_id=cohort,
                round_id=rnd,
                n_devices=2,
                min_devices=2,
                drafts=legacy,
                job_id=None,
                computed_at=f.clock(),
            )
        )
    stored = f.ok(f.client.get(f"{API}/aggregates/{rnd}/stored", headers=f.admin))
    assert stored["may_align"] is True and stored["meets_k"] is True
    assert stored["drafts"]["d0"]["score"] == 0.25 and stored["drafts"]["d0"]["accuracy"] is None
    assert [stored["drafts"][d]["eligible"] for d in ("d0", "d1")] == [True, False]
