"""Campaigns on a real database (SQLite, and PostgreSQL when configured), driven by the real worker in this
process with an injected clock: rounds that run themselves, the closing rule, k, failures that back off
and pause, a worker that died after storing its output, an interrupted transition, the per-cohort lock,
lineage and rollback. The teacher is scripted and DPO is faked (``tests/support/soak_worker.py``; the soak test
runs the same with real processes)."""

from __future__ import annotations

from typing import Any

import pytest

from server import driver, job_handlers, queue
from server.tables import Job
from server.worker import Worker
from tests.support.server_support import Fleet
from tests.support.soak_worker import fake_align, open_teacher
from tests.support.teacher_fakes import ScriptedTeacher

POLICY = {"drafts": {"n_questions": 2, "styles": ["plain", "expert"], "batch_size": 4}, "min_items": 2,
          "tailor": {"n_questions": 3, "check_samples": 0, "batch_size": 4}}


@pytest.fixture
def teacher(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The soak test's scripted teacher and fake DPO; records the adapter each teacher was opened with."""
    opened: list[str | None] = []

    def open_(settings: Any, adapter: str | None) -> ScriptedTeacher:
        opened.append(adapter)
        return open_teacher(settings, adapter)

    monkeypatch.setattr(job_handlers, "_open_teacher", open_)
    monkeypatch.setattr(job_handlers, "align", fake_align)
    return opened


def _worker(f: Fleet, name: str = "w") -> Worker:
    return Worker(f.settings, f.sessions, worker_id=name, clock=f.clock, heartbeat_thread=False,
                  jitter=lambda: 0.0)


def _settle(w: Worker, steps: int = 60) -> None:
    """Run jobs and ticks until nothing moves."""
    for _ in range(steps):
        if w.run_once() is None and not w.drive():
            return
    raise AssertionError("the campaign did not settle")


def _campaign(f: Fleet, cohort: str, rounds: int | None = 1, **policy: Any) -> dict[str, Any]:
    body = {"cohort_id": cohort, "rounds": rounds, "policy": {**POLICY, **policy}}
    return f.ok(f.client.post("/api/v1/campaigns", json=body, headers=f.admin), 201)


def _show(f: Fleet, cid: str) -> dict[str, Any]:
    return f.ok(f.client.get(f"/api/v1/campaigns/{cid}?events=500", headers=f.admin))


def _report_all(f: Fleet, round_id: str, devices: list[dict[str, str]]) -> None:
    """Each device scores the expert rationales 9/10 and the plain ones 3/10."""
    drafts = f.ok(f.client.get(f"/api/v1/rounds/{round_id}/drafts", headers=f.admin))["drafts"]
    for dev in devices:
        scores = [(d["id"], 10, 9 if d["id"].endswith("expert") else 3) for d in drafts]
        f.ok(f.report(round_id, dev, scores))


def test_a_campaign_runs_its_rounds_by_itself_with_lineage(fleet: Fleet, teacher: list[str | None]) -> None:
    f = fleet
    cohort = f.cohort(k=2)
    devices = [f.device(cohort)[1] for _ in range(2)]
    cid = _campaign(f, cohort, rounds=2, close_devices=2)["campaign_id"]
    w = _worker(f)
    for n in (1, 2):
        _settle(w)
        c = _show(f, cid)
        assert (c["state"], c["round_no"], c["step"]) == ("active", n, "collect")
        _report_all(f, c["round_id"], devices)
        _settle(w)
        f.clock.advance(60)
    c = _show(f, cid)
    assert c["state"] == "completed" and c["finished_at"] is not None
    r1, r2 = c["history"]
    assert (r1["align"], r2["align"]) == ("pairs", "pairs") and r1["n_pairs"] > 0 and r1["n_reports"] == 2
    assert r1["parent_adapter_id"] is None and r2["parent_adapter_id"] == r1["adapter_id"]
    assert r1["reward_accuracy_before"] == 0.5 and r1["reward_accuracy_after"] == 1.0
    assert r2["dataset_examples"] == 3 and r2["dataset_bytes"] > 0
    adapters = f.ok(f.client.get(f"/api/v1/adapters?cohort_id={cohort}", headers=f.admin))
    assert [(a["adapter_id"], a["parent_id"], a["lineage"], a["current"]) for a in adapters] == [
        (r1["adapter_id"], None, [], False), (r2["adapter_id"], r1["adapter_id"], [r1["adapter_id"]], True)]
    assert adapters[0]["datasets"] == [r1["dataset_id"]] and adapters[1]["round_id"] == r2["round_id"]
    # each round's drafts and dataset came from the teacher with the cohort's newest adapter
    paths = {a["adapter_id"]: a["path"] for a in adapters}
    assert teacher == [None, paths[r1["adapter_id"]], paths[r1["adapter_id"]], paths[r2["adapter_id"]]]
    manifest = f.ok(f.client.get(f"/api/v1/datasets/{r2['dataset_id']}", headers=f.admin))
    assert manifest["round_id"] == r2["round_id"]
    # every transition once, numbered without a gap
    ev = c["events"]
    assert [e["version"] for e in ev] == list(range(1, len(ev) + 1)) == list(range(1, c["version"] + 1))
    assert [e["event"] for e in ev].count("closed") == 2
    dash = f.ok(f.client.get("/api/v1/dashboard/summary", headers=f.admin))
    (row,) = [x for x in dash["cohorts"] if x["cohort_id"] == cohort]
    assert (row["adapter_id"], row["adapter_lineage"]) == (r2["adapter_id"], [r1["adapter_id"]])
    assert "adapter" not in row and dash["campaigns"][0]["history"][1]["adapter_id"] == r2["adapter_id"]


def test_the_deadline_closes_a_round_and_below_k_skips_alignment(fleet: Fleet, teacher) -> None:
    f = fleet
    cohort = f.cohort(k=3)
    dev = f.device(cohort)[1]
    cid = _campaign(f, cohort, rounds=1, deadline_s=60)["campaign_id"]
    w = _worker(f)
    _settle(w)
    c = _show(f, cid)
    _report_all(f, c["round_id"], [dev])
    _settle(w)
    assert _show(f, cid)["step"] == "collect"          # 1 of k=3 reported, the deadline is ahead
    f.clock.advance(61)
    _settle(w)
    c = _show(f, cid)
    (r,) = c["history"]
    assert c["state"] == "completed" and r["align"] == "below_k" and r["adapter_id"] is None
    assert r["dataset_id"] is not None and r["n_devices"] == 1
    assert any("deadline passed" in e["message"] for e in c["events"])
    assert not [j for j in f.ok(f.client.get("/api/v1/jobs?kind=align", headers=f.admin))]


def test_failing_steps_back_off_then_pause_with_the_reason_and_resume(fleet: Fleet, monkeypatch) -> None:
    f = fleet
    monkeypatch.setattr(job_handlers, "_open_teacher", lambda s, a: ScriptedTeacher(lambda m, kw, i: "I cannot."))
    cohort = f.cohort(k=1)
    cid = _campaign(f, cohort, max_failures=2, drafts={"n_questions": 2, "max_question_prompts": 2})["campaign_id"]
    w = _worker(f)
    _settle(w)
    c = _show(f, cid)
    assert (c["state"], c["failures"]) == ("active", 1) and c["events"][-2]["event"] == "failed"
    retry = f.ok(f.client.get(f"/api/v1/jobs/{c['job_id']}", headers=f.admin))
    assert retry["state"] == "queued" and retry["not_before"] is not None   # the backoff: not yet
    assert w.run_once() is None
    f.clock.advance(f.settings.job_retry_max_s)
    _settle(w)
    c = _show(f, cid)
    assert c["state"] == "paused" and "2 jobs failed in a row" in c["reason"] and "no usable drafts" in c["reason"]
    assert w.run_once() is None and _show(f, cid)["version"] == c["version"]   # paused: nothing moves
    monkeypatch.setattr(job_handlers, "_open_teacher", open_teacher)
    c = f.ok(f.client.post(f"/api/v1/campaigns/{cid}/resume", headers=f.admin))
    assert (c["state"], c["failures"], c["reason"]) == ("active", 0, None)
    _settle(w)
    assert _show(f, cid)["step"] == "collect"
    c = f.ok(f.client.post(f"/api/v1/campaigns/{cid}/stop", headers=f.admin))
    assert c["state"] == "stopped"
    assert f.ok(f.client.get(f"/api/v1/rounds/{c['round_id']}", headers=f.admin))["state"] == "closed"
    assert f.client.post(f"/api/v1/campaigns/{cid}/resume", headers=f.admin).status_code == 409


def test_one_live_campaign_per_cohort_and_policies_checked_naming_the_field(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort()
    _campaign(f, cohort)
    r = f.client.post("/api/v1/campaigns", json={"cohort_id": cohort, "rounds": 1}, headers=f.admin)
    assert r.status_code == 409 and r.json()["error"]["detail"]["field"] == "cohort_id"
    other = f.cohort()
    r = f.client.post("/api/v1/campaigns", json={"cohort_id": other, "rounds": 1,
                                                 "policy": {"align": {"epochs": -1}}}, headers=f.admin)
    assert r.status_code == 422 and "align.epochs" in r.text
    r = f.client.post("/api/v1/campaigns", json={"cohort_id": other, "rounds": 1,
                                                 "policy": {"tailor": {"no_such": 1}}}, headers=f.admin)
    assert r.status_code == 422 and "tailor" in r.text
    assert f.client.get("/api/v1/campaigns/cmp_" + "0" * 32, headers=f.admin).status_code == 404


def test_an_attempt_rerun_after_its_worker_died_finds_its_output(fleet: Fleet, teacher, monkeypatch) -> None:
    """The worker stores the round, then dies before the job is marked done; the next attempt finds it."""
    f = fleet
    cohort = f.cohort(k=1)
    cid = _campaign(f, cohort)["campaign_id"]
    w = _worker(f)
    with monkeypatch.context() as m:
        m.setattr(queue, "succeed", lambda *a, **kw: False)   # the death: no outcome recorded
        w.run_once()
    job = f.ok(f.client.get(f"/api/v1/jobs/{_show(f, cid)['job_id']}", headers=f.admin))
    assert job["state"] == "running" and len(f.ok(f.client.get("/api/v1/rounds", headers=f.admin))) == 1
    f.clock.advance(f.settings.job_dead_after_s + 1)
    w.run_once()                                     # re-queued after the backoff
    f.clock.advance(f.settings.job_retry_max_s)
    _settle(w)
    job = f.ok(f.client.get(f"/api/v1/jobs/{job['job_id']}", headers=f.admin))
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["result"]["resumed"] is True
    assert len(f.ok(f.client.get("/api/v1/rounds", headers=f.admin))) == 1
    assert _show(f, cid)["step"] == "collect"


def test_a_transition_that_dies_before_its_commit_leaves_nothing(fleet: Fleet, monkeypatch) -> None:
    f = fleet
    cid = _campaign(f, f.cohort())["campaign_id"]
    real = queue.create_job

    def create_then_die(*a: Any, **kw: Any) -> Any:
        real(*a, **kw)
        raise KeyboardInterrupt   # the process is interrupted after the job row, before the commit

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(queue, "create_job", create_then_die)
        driver.tick(f.sessions, f.settings, f.clock())
    assert f.ok(f.client.get("/api/v1/jobs", headers=f.admin)) == [] and _show(f, cid)["version"] == 1
    assert len(driver.tick(f.sessions, f.settings, f.clock())) == 1
    assert len(driver.tick(f.sessions, f.settings, f.clock())) == 0   # queued once; waits for its job
    (job,) = f.ok(f.client.get("/api/v1/jobs", headers=f.admin))
    assert job["campaign_id"] == cid and _show(f, cid)["job_id"] == job["job_id"]


def test_retries_wait_an_exponential_backoff_with_jitter(fleet: Fleet) -> None:
    f = fleet
    cohort = f.cohort()
    with f.sessions.begin() as s:
        job_id = queue.create_job(s, kind="tailor", cohort_id=cohort, round_id=None, params={}, max_attempts=4,
                                  now=f.clock()).id
    backoff = queue.Backoff(base_s=10, max_s=25, jitter=lambda: 0.5)
    waits = []
    for _ in range(3):
        c = queue.claim(f.sessions, "w", f.clock())
        assert c is not None and c.job_id == job_id
        assert queue.fail(f.sessions, c, "out of memory", f.clock(), retry=True, backoff=backoff) == "queued"
        with f.sessions() as s:
            job = s.get(Job, job_id)
            waits.append((job.not_before - f.clock()).total_seconds())
            assert job.error == "out of memory"
        assert queue.claim(f.sessions, "w", f.clock()) is None          # not before its time
        f.clock.advance(waits[-1])
    assert waits == [7.5, 15.0, 18.75]                                  # 10, 20, 25 (cap) x 0.75
    assert [queue.retry_delay(3, 10, 100, j) for j in (0.0, 0.999)] == [20.0, pytest.approx(39.98)]


def test_one_align_or_tailor_of_a_cohort_runs_at_a_time(fleet: Fleet) -> None:
    f = fleet
    a, b = f.cohort(), f.cohort()
    with f.sessions.begin() as s:
        ids = []
        for kind, cohort in (("tailor", a), ("align", a), ("tailor", b), ("elicit", a)):   # oldest first
            f.clock.advance(1)
            ids.append(queue.create_job(s, kind=kind, cohort_id=cohort, round_id=None, params={}, max_attempts=1,
                                        now=f.clock()).id)
    first = queue.claim(f.sessions, "w1", f.clock())
    second = queue.claim(f.sessions, "w2", f.clock())
    third = queue.claim(f.sessions, "w3", f.clock())
    assert [first.job_id, second.job_id, third.job_id] == [ids[0], ids[2], ids[3]]   # a's align waits
    assert queue.claim(f.sessions, "w4", f.clock()) is None
    queue.succeed(f.sessions, first, {}, f.clock())
    assert queue.claim(f.sessions, "w4", f.clock()).job_id == ids[1]


def test_rollback_to_an_earlier_adapter_or_the_base(fleet: Fleet, teacher) -> None:
    f = fleet
    cohort = f.cohort(k=1)
    dev = f.device(cohort)[1]
    cid = _campaign(f, cohort, rounds=2, close_devices=1)["campaign_id"]
    w = _worker(f)
    for _ in range(2):
        _settle(w)
        _report_all(f, _show(f, cid)["round_id"], [dev])
        _settle(w)
        f.clock.advance(60)
    first, second = (r["adapter_id"] for r in _show(f, cid)["history"])
    url = f"/api/v1/cohorts/{cohort}/rollback"
    assert f.ok(f.client.post(url, json={"adapter_id": first}, headers=f.admin))["adapter_id"] == first
    adapters = f.ok(f.client.get(f"/api/v1/adapters?cohort_id={cohort}", headers=f.admin))
    assert [a["current"] for a in adapters] == [True, False]
    other = f.cohort()
    r = f.client.post(f"/api/v1/cohorts/{other}/rollback", json={"adapter_id": second}, headers=f.admin)
    assert r.status_code == 404 and r.json()["error"]["detail"]["field"] == "adapter_id"
    assert f.ok(f.client.post(url, json={"adapter_id": None}, headers=f.admin))["adapter_id"] is None
    with f.sessions.begin() as s:
        queue.create_job(s, kind="align", cohort_id=cohort, round_id=None, params={}, max_attempts=1, now=f.clock())
    assert f.client.post(url, json={"adapter_id": first}, headers=f.admin).status_code == 409
