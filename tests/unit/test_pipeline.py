"""The offline pipeline's file stages (draft → score → pairs) with fakes: outputs, resume, invalidation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arte.drafts import read_drafts
from arte.elicit import ElicitConfig
from arte.errors import ConfigError, DraftFormatError
from arte.models import ModelRef
from arte.pairs import read_pairs
from arte.pipeline import Pipeline, PipelineConfig, read_score_estimates, read_scores, write_scores
from arte.prompts import RATIONALE_STYLES, question_block
from arte.tasks import Example, Task
from tests.support.teacher_fakes import LastAnswerCopyingStudent, ScriptedTeacher, is_question_prompt

OPTS = ("plausible", "implausible")
# Every item is implausible, so drafts answering "implausible" win with the copying student.
TASK = Task("sports", "Judge plausibility.", tuple(
    Example(f"e{i}", f"Player {i} did thing {i}", ("implausible",), OPTS) for i in range(40)),
    input_prefix="Statement:")


def make_teacher() -> ScriptedTeacher:
    counter = iter(range(100_000))

    def reply(messages, kw, i):
        if is_question_prompt(messages):
            n = next(counter)
            return question_block([f"Statement: athlete {n}-{k} made a play" for k in range(5)])
        style = next(k for k, v in RATIONALE_STYLES.items() if v == messages[0]["content"])
        answer = "implausible" if style in ("rules", "expert") else "plausible"
        return f"Thinking in the {style} way about it. <ans>{answer}</ans>"

    return ScriptedTeacher(reply)


def make_pipeline(work: Path, **elicit) -> tuple[Pipeline, list[str]]:
    opened: list[str] = []

    def open_teacher(adapter):
        opened.append(f"teacher:{adapter}")
        return make_teacher()

    def open_student():
        opened.append("student")
        return LastAnswerCopyingStudent()

    cfg = PipelineConfig(elicit=ElicitConfig(n_questions=8, styles=("plain", "rules"), **elicit), n_validation=12)
    p = Pipeline(work, TASK, cfg, teacher_model=ModelRef("gguf", Path("/nonexistent.gguf"), "fake"),
                 open_teacher=open_teacher, open_student=open_student, identity={"teacher": "t", "student": "s"})
    return p, opened


def test_file_stages_run_resume_and_invalidate(tmp_path) -> None:
    p, opened = make_pipeline(tmp_path)
    events = []
    p.progress = lambda *a: events.append(a)
    out = p.run(["draft", "score", "pairs"])
    assert [s["skipped"] for s in out["stages"].values()] == [False, False, False]
    assert opened == ["teacher:None", "student"]
    drafts = read_drafts(p.paths["drafts"])
    assert len(drafts) == 16
    scores = read_scores(p.paths["scores"])
    assert set(scores) == {d.id for d in drafts}
    # The copying student answers like the demonstration: "implausible" drafts get 12/12, "plausible" 0/12.
    assert {scores[d.id] for d in drafts if d.style == "rules"} == {(12.0, 12.0)}
    assert {scores[d.id] for d in drafts if d.style == "plain"} == {(12.0, 0.0)}
    pairs = read_pairs(p.paths["pairs"])
    assert {pr.kind for pr in pairs} == {"rationale"}       # every question has the same s_q: no question pairs
    assert all(pr.chosen_ids[0].endswith("-rules") for pr in pairs) and len(pairs) == 8
    assert out["stages"]["pairs"]["summary"]["rationale"] == 8 and out["outcome"] == "pairs"
    # label distributions: the drafts' answers, the validation items (one label: the data allow no balance)
    assert out["stages"]["draft"]["summary"]["labels"] == {"implausible": 8, "plausible": 8}
    assert json.loads(p.paths["drafts_report"].read_text())["labels"] == {"implausible": 8, "plausible": 8}
    assert out["stages"]["score"]["summary"]["labels"] == {"implausible": 12}
    assert out["labels"] == {"seeds": {"implausible": 3}, "validation": {"implausible": 12},
                             "holdout": {"implausible": 25}}
    assert {e[0] for e in events} >= {"draft/questions", "draft/rationales", "score/items"}
    state = json.loads((tmp_path / "pipeline.json").read_text())
    assert set(state["stages"]) == {"draft", "score", "pairs"}

    # Resume: nothing runs, no model is opened.
    p2, opened2 = make_pipeline(tmp_path)
    out2 = p2.run(["draft", "score", "pairs"])
    assert [s["skipped"] for s in out2["stages"].values()] == [True, True, True] and opened2 == []

    # A deleted output re-runs its stage only (same content -> later stages stay current).
    p2.paths["scores"].unlink()
    out3 = p2.run(["draft", "score", "pairs"])
    assert [s["skipped"] for s in out3["stages"].values()] == [True, False, True] and opened2 == ["student"]

    # A changed draft config re-runs drafting, and scoring/pairs because their input changed.
    p3, opened3 = make_pipeline(tmp_path, seed=5)
    out4 = p3.run(["draft", "score", "pairs"])
    assert [s["skipped"] for s in out4["stages"].values()] == [False, False, False]

    # force re-runs a current stage.
    out5 = p3.run(["draft"], force=["draft"])
    assert out5["stages"]["draft"]["skipped"] is False


def test_unknown_stage(tmp_path) -> None:
    p, _ = make_pipeline(tmp_path)
    with pytest.raises(ConfigError, match="unknown stage"):
        p.run(["draft", "distill"])


def test_no_signal_is_a_result_that_stops_the_later_stages(tmp_path, monkeypatch) -> None:
    import arte.pipeline as pipeline_mod

    def no_align(*a, **kw):
        raise AssertionError("align must not run without pairs")

    monkeypatch.setattr(pipeline_mod, "align", no_align)
    p, opened = make_pipeline(tmp_path)
    p.run(["draft"])
    # every draft 6/12 on the same items with the same outcomes: nothing separates
    same = [1] * 6 + [0] * 6
    drafts = read_drafts(p.paths["drafts"])
    write_scores(p.paths["scores"], "sports", "loglik", 12, {d.id: (12.0, 6.0) for d in drafts},
                 outcomes={d.id: same for d in drafts}, item_ids=[f"e{i}" for i in range(12)])
    p.state["stages"]["score"] = {"fingerprint": p.fingerprint("score")}
    out = p.run()
    assert out["outcome"] == "no_signal"
    pairs = out["stages"]["pairs"]["summary"]
    assert pairs["outcome"] == "no_signal" and pairs["n_pairs"] == 0 and pairs["skipped"]["rationale"] == {"tie": 8}
    assert out["signal"]["scores"]["spread"] == 0.0 and out["signal"]["items"] == {"min": 12.0, "max": 12.0}
    assert out["signal"]["answers"] == {"implausible": 8, "plausible": 8}
    assert "no signal" in out["reason"] and "8 questions" in out["reason"]
    for stage in ("align", "tailor"):
        assert out["stages"][stage] == {"skipped": True, "stopped": "no_signal", "seconds": 0.0,
                                        "summary": {"reason": out["reason"]}}
    assert read_pairs(p.paths["pairs"]) == [] and opened == ["teacher:None"]   # the tailoring teacher never opened
    # a rerun finds the pairs stage current and stops again, without opening anything
    p2, opened2 = make_pipeline(tmp_path)
    again = p2.run()
    assert again["outcome"] == "no_signal" and again["stages"]["pairs"]["skipped"] is True and opened2 == []
    assert again["stages"]["tailor"]["stopped"] == "no_signal"


def test_scores_keep_per_item_outcomes_for_paired_comparisons(tmp_path) -> None:
    p, _ = make_pipeline(tmp_path)
    p.run(["draft", "score"])
    doc = json.loads(p.paths["scores"].read_text())
    assert doc["item_ids"] == [e.id for e in p.split.validation]
    est = read_score_estimates(p.paths["scores"])
    rules = [v for k, v in est.items() if k.endswith("-rules")]
    assert rules and all(e.outcomes == (1,) * 12 and e.score == 1.0 for e in rules)
    out = p.run(["pairs"])
    assert out["outcome"] == "pairs" and out["stages"]["pairs"]["summary"]["comparisons"] == {"paired": 8,
                                                                                               "intervals": 0}
    bad = json.loads(p.paths["scores"].read_text())
    bad["scores"][1]["outcomes"] = "1" * 11
    p.paths["scores"].write_text(json.dumps(bad))
    with pytest.raises(DraftFormatError) as e:
        read_score_estimates(p.paths["scores"])
    assert e.value.index == 1 and e.value.field == "scores"


def test_read_scores_accepts_edge_agent_output_and_rejects_junk(tmp_path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"task": "t", "scores": [{"draft_id": "a", "n_items": 10, "n_correct": 4,
                                                          "accuracy": 0.4}]}))
    assert read_scores(path) == {"a": (10.0, 4.0)}
    path.write_text(json.dumps({"scores": [{"draft_id": "a", "n_items": "ten", "n_correct": 4}]}))
    with pytest.raises(DraftFormatError) as e:
        read_scores(path)
    assert e.value.index == 0 and e.value.field == "scores"
    with pytest.raises(DraftFormatError, match="no such file"):
        read_scores(tmp_path / "missing.json")


def test_irt_selection_is_part_of_the_pairs_stage_and_k_reruns_only_pairs(tmp_path) -> None:
    import dataclasses

    p, opened = make_pipeline(tmp_path)
    p.config = dataclasses.replace(p.config, select_items=5)
    out = p.run(["draft", "score", "pairs"])
    sel = json.loads(p.paths["selection"].read_text())
    assert len(sel["selected"]) == 5 and set(sel["selected"]) <= {e.id for e in p.split.validation}
    assert sel["n_items"] == 12 and sel["n_drafts"] == 16 and sel["labels"] == {"implausible": 5}
    summary = out["stages"]["pairs"]["summary"]
    assert summary["selection"]["kept"] == 5 and summary["signal"]["items"] == {"min": 5.0, "max": 5.0}
    kept = p.pair_scores()
    assert {e.n_items for e in kept.values()} == {5.0} and len(kept) == 16
    # a different k: the pairs stage reruns on the stored outcomes, nobody rescored anything
    p.config = dataclasses.replace(p.config, select_items=3)
    opened.clear()
    out = p.run(["draft", "score", "pairs"])
    assert [s["skipped"] for s in out["stages"].values()] == [True, True, False] and opened == []
    assert len(json.loads(p.paths["selection"].read_text())["selected"]) == 3
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(p.config, select_items=12)   # not fewer than the 12 validation items
    assert e.value.field == "select_items"


def test_a_branch_reuses_drafts_and_scores_with_its_own_pairs(tmp_path) -> None:
    import dataclasses

    from arte.pairs import PairConfig

    p, opened = make_pipeline(tmp_path / "main")
    with pytest.raises(ConfigError, match="branch needs a current 'draft'"):
        p.branch(tmp_path / "early", p.config)
    p.run(["draft", "score", "pairs"])
    opened.clear()
    b = p.branch(tmp_path / "q", dataclasses.replace(p.config, pairs=PairConfig(kinds=("question",))))
    out = b.run(["draft", "score", "pairs"])
    assert [s["skipped"] for s in out["stages"].values()] == [True, True, False] and opened == []
    assert b.paths["drafts"].read_bytes() == p.paths["drafts"].read_bytes()
    assert read_pairs(b.paths["pairs"]) == [] and out["outcome"] == "no_signal"   # equal s_q: no question pair
    assert len(read_pairs(p.paths["pairs"])) == 8                                 # the main run is untouched
