"""The worker runs the teacher's jobs against a real database (SQLite, and PostgreSQL when configured): an
``elicit`` job opens a round with the teacher's drafts and a ``tailor`` job stores the cohort's dataset. The
teacher is scripted (the real model runs these jobs in ``tests/slow/test_demo_e2e.py``); a handler's log
lines are written while the job works, which once deadlocked the SQLite write lock."""

from __future__ import annotations

import json

import pytest

from arte.prompts import question_block
from arte.tasks import label_counts
from server import job_handlers
from server.worker import Worker
from tests.support.server_support import Fleet
from tests.support.teacher_fakes import ScriptedTeacher, asked_question, is_question_prompt

QUESTIONS = [f"Statement: Player {i} caught the screen pass in the end zone\nOptions: yes, no" for i in range(8)]


def _teacher(messages, kw, i) -> str:
    if messages[-1]["role"] == "assistant":
        return ""
    if is_question_prompt(messages):
        start = (kw["seed"] + i) % 2 * 4
        return question_block(QUESTIONS[start:start + 4])
    q = asked_question(messages)
    style = messages[0]["content"][:20]   # each style has its own system prompt: distinct rationales
    return f"{style}: a receiver catches passes in football. <ans>{'yes' if '2' in q else 'no'}</ans>"


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[ScriptedTeacher]:
    opened: list[ScriptedTeacher] = []

    def open_teacher(settings, adapter):
        opened.append(ScriptedTeacher(_teacher, adapter=adapter))
        return opened[-1]

    monkeypatch.setattr(job_handlers, "_open_teacher", open_teacher)
    return opened


def _run(f: Fleet, body: dict) -> dict:
    job_id = f.ok(f.client.post("/api/v1/jobs", json=body, headers=f.admin), 201)["job_id"]
    assert Worker(f.settings, f.sessions, worker_id="w", clock=f.clock, heartbeat_thread=False).run_once() == job_id
    job = f.ok(f.client.get(f"/api/v1/jobs/{job_id}", headers=f.admin))
    logs = f.ok(f.client.get(f"/api/v1/jobs/{job_id}/logs", headers=f.admin))
    assert job["state"] == "succeeded", (job, logs)
    return {**job, "logs": [x["message"] for x in logs]}


def test_elicit_opens_a_round_and_tailor_stores_a_dataset(fleet: Fleet, scripted: list[ScriptedTeacher]) -> None:
    f = fleet
    cohort = f.cohort(k=1)
    config = {"n_questions": 4, "styles": ["plain", "expert"], "batch_size": 4}
    job = _run(f, {"kind": "elicit", "cohort_id": cohort,
                   "params": {"mode": "loglik", "min_items": 5, "config": config}})
    res = job["result"]
    assert res["n_drafts"] == 8 and res["elicitation"]["questions"] == 4
    assert any(f"round {res['round_id']} opened with 8 drafts" in m for m in job["logs"])
    rnd = f.ok(f.client.get(f"/api/v1/rounds/{res['round_id']}", headers=f.admin))
    assert (rnd["state"], rnd["mode"], rnd["min_items"], rnd["n_drafts"]) == ("open", "loglik", 5, 8)
    drafts = f.ok(f.client.get(f"/api/v1/rounds/{res['round_id']}/drafts", headers=f.admin))["drafts"]
    assert {d["question"] for d in drafts} == set(QUESTIONS[:4]) and all(d["answer"] in ("yes", "no") for d in drafts)
    assert res["labels"] == label_counts(d["answer"] for d in drafts) and sum(res["labels"].values()) == 8

    job = _run(f, {"kind": "tailor", "cohort_id": cohort, "round_id": res["round_id"],
                   "params": {"config": {"n_questions": 6, "check_samples": 0, "batch_size": 4}}})
    ds = job["result"]
    assert ds["n_examples"] == 6 and any(ds["dataset_id"] in m for m in job["logs"])
    (manifest,) = f.ok(f.client.get("/api/v1/datasets", headers=f.admin))
    assert manifest["dataset_id"] == ds["dataset_id"] and manifest["sha256"] == ds["sha256"]
    r = f.client.get(f"/api/v1/datasets/{ds['dataset_id']}/content", headers=f.admin)
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert len(lines) == 6 and {x["question"] for x in lines} <= set(QUESTIONS)
    assert ds["labels"] == label_counts(x["answer"] for x in lines)            # the tailored data's labels
    assert all(t.closed for t in scripted) and [t.adapter for t in scripted] == [None, None]


def test_a_teacher_with_no_usable_drafts_fails_the_job_without_a_round(fleet: Fleet, monkeypatch) -> None:
    f = fleet
    monkeypatch.setattr(job_handlers, "_open_teacher", lambda s, a: ScriptedTeacher(lambda m, kw, i: "I cannot."))
    cohort = f.cohort(k=1)
    body = {"kind": "elicit", "cohort_id": cohort, "max_attempts": 1,
            "params": {"config": {"n_questions": 2, "max_question_prompts": 2}}}
    job_id = f.ok(f.client.post("/api/v1/jobs", json=body, headers=f.admin), 201)["job_id"]
    Worker(f.settings, f.sessions, worker_id="w", clock=f.clock, heartbeat_thread=False).run_once()
    job = f.ok(f.client.get(f"/api/v1/jobs/{job_id}", headers=f.admin))
    assert job["state"] == "failed" and "no usable drafts" in job["error"]
    assert f.ok(f.client.get("/api/v1/rounds", headers=f.admin)) == []


def test_align_builds_pairs_from_the_pooled_reports(fleet: Fleet, scripted, monkeypatch, tmp_path) -> None:
    """The reports' pooled scores reach arte.pairs with their pooled variance: the best and worst rationale
    of a question become a pair, the best and worst questions a question pair, each beyond noise; equal
    rationales make none (DPO is captured, not run)."""
    import arte.dpo

    f = fleet
    cohort = f.cohort(k=2)
    config = {"n_questions": 4, "styles": ["plain", "expert"], "batch_size": 4}
    rnd = _run(f, {"kind": "elicit", "cohort_id": cohort, "params": {"config": config}})["result"]["round_id"]
    ids = [d["id"] for d in f.ok(f.client.get(f"/api/v1/rounds/{rnd}/drafts", headers=f.admin))["drafts"]]
    assert ids[:2] == ["q0000-plain", "q0000-expert"]
    correct = {d: 5 for d in ids} | {"q0000-plain": 9, "q0000-expert": 2, "q0003-plain": 1, "q0003-expert": 1}
    for _ in range(2):   # two devices, the same counts
        _, dev = f.device(cohort)
        f.ok(f.report(rnd, dev, [(d, 10, correct[d]) for d in ids]))
    seen = {}

    def fake_align(model, pairs, config, out_dir, **kw):
        seen["pairs"] = pairs
        out_dir.mkdir(parents=True)
        held = {"pairs": 1, "before": {"margin": 0.0, "accuracy": 0.0, "loss": 0.69},
                "after": {"margin": 0.1, "accuracy": 1.0, "loss": 0.64}}
        meta = {"pairs": {"total": 2, "trained": 1, "held_out": 1}, "steps": 1, "warmup_steps": 0,
                "train_loss": 0.69, "losses": [{"step": 1, "loss": 0.69, "margin": 0.0, "lr": 5e-5}],
                "reward": {"held_out": held, "train": {"pairs": 1, "before": None, "after": None}},
                "reward_margin": {"on": "held_out", "pairs": 1, "before": 0.0, "after": 0.1,
                                  "accuracy_before": 0.0, "accuracy_after": 1.0}, "seconds": {"total": 1.0}}
        (out_dir / arte.dpo.METADATA_FILE).write_text(json.dumps(meta))
        return arte.dpo.AlignResult(out_dir, meta)

    monkeypatch.setattr(job_handlers, "align", fake_align)
    monkeypatch.setattr(job_handlers, "resolve_model", lambda ref, cache: ref)
    job = _run(f, {"kind": "align", "cohort_id": cohort, "round_id": rnd,
                   "params": {"pairs": {"questions_per_block": 1}}})
    kinds = {p.kind: p for p in seen["pairs"]}
    assert job["result"]["n_pairs"] == len(seen["pairs"]) == 2 and job["result"]["n_devices"] == 2
    # the job's result carries the DPO judgement on the held-out pairs (arte_align.json)
    assert job["result"]["reward"]["held_out"]["after"]["accuracy"] == 1.0
    assert job["result"]["reward_margin"]["on"] == "held_out" and job["result"]["warmup_steps"] == 0
    assert job["result"]["pairs"]["held_out"] == 1 and job["result"]["losses"][0]["lr"] == 5e-5
    r = kinds["rationale"]
    assert (r.chosen_ids, r.rejected_ids, round(r.margin, 6)) == (("q0000-plain",), ("q0000-expert",), 0.7)
    assert kinds["question"].chosen_ids == ("q0000",)      # its mean score 0.55 beats q0003's 0.1
    assert kinds["question"].rejected_ids == ("q0003",)
    sel = job["result"]["pair_selection"]
    assert job["result"]["outcome"] == sel["outcome"] == "pairs"
    assert sel["skipped"]["rationale"] == {"tie": 3} and sel["comparisons"] == {"paired": 0, "intervals": 1}
    assert sel["signal"]["items"] == {"min": 20.0, "max": 20.0} and sel["criterion"]["confidence"] == 0.9


def test_align_without_signal_succeeds_as_no_signal_and_keeps_the_teacher(fleet: Fleet, scripted, monkeypatch) -> None:
    """Every draft scored alike: no pair. The job ends once, as "no signal" with the numbers, not as a
    failure to retry; DPO never runs and the cohort keeps its adapter (none)."""

    f = fleet
    cohort = f.cohort(k=2)
    config = {"n_questions": 4, "styles": ["plain", "expert"], "batch_size": 4}
    rnd = _run(f, {"kind": "elicit", "cohort_id": cohort, "params": {"config": config}})["result"]["round_id"]
    ids = [d["id"] for d in f.ok(f.client.get(f"/api/v1/rounds/{rnd}/drafts", headers=f.admin))["drafts"]]
    for _ in range(2):
        _, dev = f.device(cohort)
        f.ok(f.report(rnd, dev, [(d, 6, 4) for d in ids]))
    monkeypatch.setattr(job_handlers, "align", lambda *a, **kw: pytest.fail("DPO must not run without pairs"))
    job = _run(f, {"kind": "align", "cohort_id": cohort, "round_id": rnd, "max_attempts": 3})
    res = job["result"]
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["error"] is None
    assert res["outcome"] == "no_signal" and res["n_pairs"] == 0 and res["adapter"] is None
    sel = res["pair_selection"]
    assert sel["skipped"] == {"question": {"tie": 1}, "rationale": {"tie": 4}}
    assert sel["signal"]["scores"]["spread"] == 0.0 and sel["signal"]["items"] == {"min": 12.0, "max": 12.0}
    assert sum(sel["signal"]["answers"].values()) == 8
    assert "no signal" in res["reason"] and any("no signal" in m for m in job["logs"])
    assert f.ok(f.client.get(f"/api/v1/cohorts/{cohort}", headers=f.admin)).get("adapter") is None
