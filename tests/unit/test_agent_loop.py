"""The run loop against the fake fleet: score -> report -> download -> train -> metrics; resumes after a
kill at any step and never reports twice; respects the profile's conditions and budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.errors import NetworkError, TrainingError
from edge_agent.loop import MAX_TRAIN_FAILURES, Agent, run_forever, run_once
from edge_agent.train_step import train_step
from firmware_profiles import load_profiles
from tests.support.agent import DATASET, DRAFTS, ON_BATTERY, FakeTrainer, make_agent
from tests.support.fake_fleet import FakeFleet, Killed
from tests.support.fakes import CopyingStudent


def expected_counts(agent: Agent) -> dict[str, float]:
    """What the scoring engine itself says about the drafts on the agent's validation items."""
    from arte.drafts import draft_from_dict
    from arte.scoring import score_drafts
    from edge_agent.loop import _private_split

    task, validation, _ = _private_split(agent)
    res = score_drafts(CopyingStudent(), task, [draft_from_dict(d) for d in DRAFTS], validation)
    return {s.draft_id: float(s.n_correct) for s in res.scores}


def test_one_iteration_does_the_whole_loop(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)
    fleet.publish(DATASET)
    trainer = FakeTrainer()
    agent = make_agent(tmp_path, fleet, private_data, train=trainer)
    it = run_once(agent)
    assert it.progressed and it.round["step"] == "queued" and it.dataset["step"] == "trained"
    assert len(it.delivery["delivered"]) == 2 and it.delivery["pending"] == 0
    (report,) = fleet.report_bodies
    want = expected_counts(agent)
    assert {s["draft_id"]: s["n_correct"] for s in report["scores"]} == want
    assert all(set(s) == {"draft_id", "n_items", "n_correct"} for s in report["scores"])
    (metrics,) = fleet.metrics
    assert agent.state.active_adapter()["version"] == it.dataset["adapter_version"]
    # nothing private ever left: no item text, no data path, in any request
    for req in fleet.log:
        body = req.content.decode() + str(req.url)
        assert "secret" not in body and str(private_data) not in body
    # and the sent log holds exactly what went out
    assert {m["kind"] for m in agent.state.sent()} == {"report", "metrics"}


def test_a_second_iteration_has_nothing_to_do(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)
    fleet.publish(DATASET)
    trainer = FakeTrainer()
    run_once(make_agent(tmp_path, fleet, private_data, train=trainer))
    posts = len(fleet.requests("POST", "."))
    it = run_once(make_agent(tmp_path, fleet, private_data, train=trainer))
    assert not it.progressed and len(fleet.requests("POST", ".")) == posts and len(trainer.calls) == 1


def test_killed_while_scoring_rescores_and_reports_once(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)

    class Dying(CopyingStudent):
        def loglik_batch(self, requests):
            raise Killed()

    with pytest.raises(Killed):
        run_once(make_agent(tmp_path, fleet, private_data, student=Dying))
    assert fleet.report_bodies == []
    agent = make_agent(tmp_path, fleet, private_data)
    assert agent.state.journal("round:r1")[0] == "drafts"
    run_once(agent)
    run_once(make_agent(tmp_path, fleet, private_data))
    assert len(fleet.report_bodies) == 1


def test_killed_before_the_receipt_was_stored_reports_once(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)
    fleet.lose_answers = 2          # the server stores the report; the agent never hears back
    it = run_once(make_agent(tmp_path, fleet, private_data))
    assert it.delivery["pending"] == 1 and len(fleet.report_bodies) == 1
    it = run_once(make_agent(tmp_path, fleet, private_data))
    assert it.delivery["delivered"][0]["duplicate"] is True and len(fleet.report_bodies) == 1


def test_server_down_while_reporting_then_up(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)
    agent = make_agent(tmp_path, fleet, private_data)
    fleet.posts_down = 100          # the server goes down just as the agent reports
    it = run_once(agent)
    assert it.round["step"] == "queued" and it.delivery["pending"] == 1 and fleet.report_bodies == []
    fleet.posts_down = 0            # back up
    it = run_once(make_agent(tmp_path, fleet, private_data))
    assert len(it.delivery["delivered"]) == 1 and len(fleet.report_bodies) == 1
    run_once(make_agent(tmp_path, fleet, private_data))
    assert len(fleet.report_bodies) == 1 and len(fleet.requests("POST", "/reports$")) == 3


def test_killed_while_training_trains_again_and_reports_metrics_once(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.publish(DATASET)
    with pytest.raises(Killed):
        run_once(make_agent(tmp_path, fleet, private_data, train=FakeTrainer(fail=Killed())))
    trainer = FakeTrainer()
    run_once(make_agent(tmp_path, fleet, private_data, train=trainer))
    run_once(make_agent(tmp_path, fleet, private_data, train=trainer))
    assert len(trainer.calls) == 1 and len(fleet.metrics) == 1
    assert len(fleet.requests("GET", "content")) == 1   # the verified download was reused


def test_killed_mid_download_resumes(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.publish(DATASET)
    fleet.kill_after = 333
    with pytest.raises(Killed):
        run_once(make_agent(tmp_path, fleet, private_data))
    it = run_once(make_agent(tmp_path, fleet, private_data))
    assert it.dataset["step"] == "trained"
    assert fleet.requests("GET", "content")[-1].headers["Range"] == "bytes=333-"


def test_dataset_changed_on_disk_is_fetched_again_before_training(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.publish(DATASET)
    run_once(make_agent(tmp_path, fleet, private_data, hw=ON_BATTERY))   # downloaded, not trained
    (path,) = (tmp_path / "state" / "datasets").glob("*.jsonl")
    path.write_bytes(DATASET.replace(b"yes", b"yep", 1))
    trainer = FakeTrainer()
    it = run_once(make_agent(tmp_path, fleet, private_data, train=trainer))
    assert it.dataset["step"] == "trained" and len(fleet.requests("GET", "content")) == 2


def test_conditions_hold_compute_but_not_network(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)
    fleet.publish(DATASET)
    trainer = FakeTrainer()
    it = run_once(make_agent(tmp_path, fleet, private_data, hw=ON_BATTERY, train=trainer))
    assert "battery" in it.blocked[0]
    assert it.round["step"] == "drafts" and it.dataset["step"] == "downloaded" and not trainer.calls
    assert fleet.report_bodies == []
    agent = make_agent(tmp_path, fleet, private_data, hw=ON_BATTERY, train=trainer)
    agent.ignore_conditions = True
    it = run_once(agent)
    assert it.round["step"] == "queued" and it.dataset["step"] == "trained"


def test_training_failures_are_retried_then_given_up(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.publish(DATASET)
    trainer = FakeTrainer(fail=TrainingError("out of memory"))
    for n in range(MAX_TRAIN_FAILURES + 1):
        it = run_once(make_agent(tmp_path, fleet, private_data, train=trainer))
    assert len(trainer.calls) == MAX_TRAIN_FAILURES and it.dataset["step"] == "failed"
    assert fleet.metrics == {}


def test_the_default_train_step_refuses_a_malformed_dataset_by_name(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)
    fleet.publish(DATASET)   # {"input", "target"} lines: not tailored drafts
    it = run_once(make_agent(tmp_path, fleet, private_data, train=train_step))
    assert it.round["step"] == "queued" and len(fleet.report_bodies) == 1
    assert it.dataset["step"] == "downloaded" and it.dataset["failures"] == 1
    assert "line 1: field 'id': missing" in it.dataset["error"]


def test_the_default_train_step_is_bounded_by_the_profile(tmp_path: Path, private_data: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile's LoRA, batch, sequence, memory, time and thread limits reach arte.finetune_job, and its
    McNemar verdict is the loop's keep decision."""
    import edge_agent.train_step as step
    from arte.finetune_job import FinetuneResult

    seen = {}

    def fake_finetune(ref, task, records, store, work_dir, config, **kw):
        seen.update(config=config, records=records, work_dir=work_dir, store=store.root)
        return FinetuneResult("incomplete", None, None, None, len(records), 10, {"steps": 3, "total_steps": 9})

    monkeypatch.setattr(step, "finetune", fake_finetune)
    monkeypatch.setattr(step, "resolve_model", lambda ref, cache: type("R", (), {"kind": "gguf"})())
    fleet = FakeFleet()
    fleet.publish(b"".join(json.dumps({"id": f"t{i}", "question": f"Is {i} even?", "rationale": "<ans>yes</ans>",
                                       "answer": "yes"}).encode() + b"\n" for i in range(500)))
    agent = make_agent(tmp_path, fleet, private_data, train=train_step)
    it = run_once(agent)
    p = agent.profile
    c = seen["config"]
    assert (c.sft.rank, c.sft.alpha, c.sft.batch_size, c.sft.max_length) == (
        p.training.lora_rank, p.training.lora_alpha, p.training.batch_size, p.training.max_seq_len)
    assert (c.sft.memory_budget_mb, c.sft.time_budget_s, c.sft.threads) == (
        p.budget.memory_mib, p.budget.train_seconds, p.runtime.threads)
    assert len(seen["records"]) == p.training.max_examples < 500
    assert c.eval.mode == p.scoring.mode == "cot-choice" and c.eval.shots == (0, 3)   # the student reasons
    assert it.dataset["step"] == "downloaded" and it.dataset["failures"] == 0 and "paused" in it.dataset
    assert seen["work_dir"] == agent.state.dir / "train-work" / "ds1" / c.sft.fingerprint()


def test_a_paused_training_resumes_without_counting_a_failure(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.publish(DATASET)
    trainer = FakeTrainer(pause_first=MAX_TRAIN_FAILURES + 1)
    for _ in range(MAX_TRAIN_FAILURES + 1):
        it = run_once(make_agent(tmp_path, fleet, private_data, train=trainer))
        assert it.dataset["step"] == "downloaded" and it.dataset["failures"] == 0
    it = run_once(make_agent(tmp_path, fleet, private_data, train=trainer))
    assert it.dataset["step"] == "trained" and len({str(c.work_dir) for c in trainer.calls}) == 1


def test_the_train_steps_keep_decision_wins(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.publish(DATASET)
    it = run_once(make_agent(tmp_path, fleet, private_data, train=FakeTrainer(before=0.4, after=0.5, keep=False)))
    assert it.dataset["kept"] is False     # better on average, but not significantly: the step said no
    assert make_agent(tmp_path, fleet, private_data).state.active_adapter() is None


def test_a_worse_adapter_is_not_kept(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.publish(DATASET)
    it = run_once(make_agent(tmp_path, fleet, private_data, train=FakeTrainer(before=0.6, after=0.5)))
    assert it.dataset["kept"] is False
    agent = make_agent(tmp_path, fleet, private_data)
    assert agent.state.active_adapter() is None and len(agent.state.adapters()) == 1
    assert list(fleet.metrics.values())[0]["duplicate"] is False


def test_too_few_private_items_skips_the_round(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS, min_items=500)
    it = run_once(make_agent(tmp_path, fleet, private_data))
    assert it.round["step"] == "skipped" and "needs 500" in it.round["reason"] and fleet.report_bodies == []


def test_time_budget_reports_the_drafts_scored_so_far(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)
    ticks = iter(range(0, 10_000, 400))      # each clock read advances 400 s; budget is 600 s
    it = run_once(make_agent(tmp_path, fleet, private_data, clock=lambda: float(next(ticks))))
    assert it.round["complete"] is False and it.round["n_drafts"] == 1
    assert len(fleet.report_bodies[0]["scores"]) == 1


def test_each_device_scores_its_own_sample_of_many_drafts(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    many = [{**DRAFTS[i % 2], "id": f"d{i:03d}"} for i in range(80)]
    fleet.open_round(many)
    it = run_once(make_agent(tmp_path, fleet, private_data))
    assert it.round["n_drafts"] == load_profiles()["laptop-cpu"].scoring.max_drafts


def test_run_forever_backs_off_while_idle_and_survives_the_network(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    agent = make_agent(tmp_path, fleet, private_data)
    waits: list[float] = []
    seen = []
    fleet.down = 2                          # first iteration: network error (2 attempts)
    run_forever(agent, poll_seconds=10, max_poll_seconds=50, wait=waits.append, iterations=5,
                on_iteration=seen.append)
    assert isinstance(seen[0], NetworkError)
    assert waits == [20, 40, 50, 50]
    fleet.open_round(DRAFTS)
    waits.clear()
    run_forever(agent, poll_seconds=10, max_poll_seconds=50, wait=waits.append, iterations=2)
    assert waits == [10]


def test_a_label_copying_student_cannot_score_by_label_on_skewed_private_data(tmp_path: Path) -> None:
    # The device's data sorted by label, 70% "yes": its validation items are balanced (taking at most half of
    # the rare label), so on the profile's first items both drafts (one answers yes, one no) tie.
    p = tmp_path / "private" / "skewed.jsonl"
    p.parent.mkdir()
    p.write_text("".join(json.dumps({"input": f"Is {i} small?", "choices": ["yes", "no"],
                                     "answer": "yes" if i < 70 else "no"}) + "\n" for i in range(100)))
    fleet = FakeFleet()
    fleet.open_round(DRAFTS)
    agent = make_agent(tmp_path, fleet, p, profile_id="raspberry-pi-5")   # scores on at most 24 items
    it = run_once(agent)
    assert it.round["step"] == "queued" and it.round["labels"] == {"no": 12, "yes": 12}
    (report,) = fleet.report_bodies
    assert {s["draft_id"]: s["n_correct"] for s in report["scores"]} == {"d-yes": 12, "d-no": 12}


def _questions(n_questions: int, per_question: int) -> list[dict]:
    return [{"id": f"q{q:02d}-r{r}", "question": f"Is {q} even?", "question_id": f"q{q:02d}",
             "rationale": f"Style {r}: {q} is {'even' if q % 2 == 0 else 'odd'}. <ans>{'yes' if q % 2 == 0 else 'no'}</ans>",
             "answer": "yes" if q % 2 == 0 else "no"} for q in range(n_questions) for r in range(per_question)]


class ItemRecordingStudent(CopyingStudent):
    """Records, per scored draft, the items it was scored on."""

    seen: list[list[bytes]] = []

    def loglik_batch(self, requests):
        ItemRecordingStudent.seen.append([bytes(t for t in p if t < 256).split(b"\nAnswer:")[-1] for p, _ in requests])
        return super().loglik_batch(requests)


def test_a_device_scores_all_rationales_of_a_question_on_the_same_items(tmp_path: Path, private_data: Path) -> None:
    """30 questions x 3 rationales = 90 drafts, over the laptop profile's 64: the device samples whole
    questions (21 of them, 63 drafts), never single drafts, and scores every one on the same items."""
    fleet = FakeFleet()
    fleet.open_round(_questions(30, 3))
    ItemRecordingStudent.seen = []
    it = run_once(make_agent(tmp_path, fleet, private_data, student=ItemRecordingStudent))
    reported = [s["draft_id"] for s in fleet.report_bodies[0]["scores"]]
    by_q: dict[str, int] = {}
    for d in reported:
        by_q[d.split("-")[0]] = by_q.get(d.split("-")[0], 0) + 1
    assert it.round["n_drafts"] == len(reported) == 63 and set(by_q.values()) == {3}
    assert len(ItemRecordingStudent.seen) == 63 and all(s == ItemRecordingStudent.seen[0] for s in ItemRecordingStudent.seen)
    assert {s["n_items"] for s in fleet.report_bodies[0]["scores"]} == {len(ItemRecordingStudent.seen[0])}


def test_a_time_budget_inside_a_question_leaves_that_question_out(tmp_path: Path, private_data: Path) -> None:
    fleet = FakeFleet()
    fleet.open_round(_questions(2, 2))
    ticks = iter(range(0, 100_000, 170))     # the 600 s budget runs out after the third draft
    it = run_once(make_agent(tmp_path, fleet, private_data, clock=lambda: float(next(ticks))))
    assert it.round["complete"] is False and it.round["n_drafts"] == 2
    assert [s["draft_id"] for s in fleet.report_bodies[0]["scores"]] == ["q00-r0", "q00-r1"]


def test_sample_by_question_takes_whole_questions_within_the_budget() -> None:
    import random

    from arte.drafts import draft_from_dict
    from edge_agent.loop import sample_by_question

    drafts = [draft_from_dict(d) for d in _questions(5, 3)] + [draft_from_dict(
        {"id": f"big-r{r}", "question": "Big?", "question_id": "big", "rationale": "x <ans>yes</ans>", "answer": "yes"})
        for r in range(8)]
    assert sample_by_question(drafts, 100, random.Random(0)) == sorted(drafts, key=lambda d: (d.question_id, d.id))
    for seed in range(20):
        got = sample_by_question(drafts, 7, random.Random(seed))
        qs = {d.question_id for d in got}
        assert len(got) <= 7 and "big" not in qs and len(got) == 3 * len(qs) and len(qs) == 2
    assert sample_by_question(drafts, 2, random.Random(0)) == []
