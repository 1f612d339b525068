"""Where each condition of `arte experiment` gets its data, with fakes (scripted teacher that tags its text
with the adapter it runs with, copying student, DPO and SFT recorded instead of run): the Original Teacher
trains on the best-scored draft rationale of each question and no DPO; ARTE's DPO sees both pair kinds,
Question Only's only question pairs, Rationale Only's only rationale pairs, each then tailoring with its own
adapter; every (condition, teacher seed) trains on as many examples; each teacher seed drafts anew."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from arte.drafts import read_drafts
from arte.elicit import ElicitConfig
from arte.models import ModelRef
from arte.pipeline import PipelineConfig
from arte.prompts import RATIONALE_STYLES, question_block
from arte.sft import SFTConfig
from arte.tailor import TailorConfig
from arte_cli import experiment_run
from arte_cli.experiment_report import check_document
from arte_cli.experiment_run import ExperimentSettings, _Models, _TaskRun, run_experiment
from tests.support.sft_fakes import CharTokenizer
from tests.support.teacher_fakes import (
    LastAnswerCopyingStudent,
    ScriptedTeacher,
    asked_question,
    is_question_prompt,
)


def _task(tmp_path: Path) -> Path:
    """Every item is implausible: with the copying student, rationales answering "implausible" win."""
    p = tmp_path / "mixed.json"
    p.write_text(json.dumps({"name": "mixed", "description": "Judge plausibility.", "examples": [
        {"input": f"Player {i} did thing {i}", "target_scores": {"plausible": 0, "implausible": 1}}
        for i in range(40)]}))
    return p


def _category(question: str) -> int:
    """0: every rationale wrong (s_q 0); 1: every rationale right (s_q 1); 2: rules right, plain wrong."""
    a, b = (int(x) for x in re.search(r"athlete (\d+)-(\d+)", question).groups())
    return (a * 5 + b) % 3


def _teacher(adapter: Path | None, seeds_seen: list[int]) -> ScriptedTeacher:
    tag = adapter.parent.name if adapter is not None else "base"
    counter = iter(range(1_000_000))

    def reply(messages, kw, i):
        if is_question_prompt(messages):
            seeds_seen.append(kw["seed"])
            n = next(counter)
            return question_block([f"Statement: athlete {n}-{k} made a play\nOptions: plausible, implausible"
                                   for k in range(5)])
        style = next((k for k, v in RATIONALE_STYLES.items() if v == messages[0]["content"]), "plain")
        cat = _category(asked_question(messages))
        right = cat == 1 or (cat == 2 and style == "rules")
        return f"[{tag}] The {style} way, seed {kw['seed']}. <ans>{'implausible' if right else 'plausible'}</ans>"

    return ScriptedTeacher(reply)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    import arte.backends.hf
    import arte.dpo
    import arte.pipeline

    calls: dict[str, list] = {"align": [], "train": [], "evaluate": [], "seeds": []}
    ref = ModelRef("gguf", Path("/nonexistent.gguf"), "fake")
    monkeypatch.setattr(experiment_run, "_models", lambda s: _Models(
        ref, ref, "llama", lambda adapter: _teacher(adapter, calls["seeds"]), LastAnswerCopyingStudent,
        {"teacher": "t", "student": "s", "tailor_teacher": "tt"}))

    def align(model, pairs, config, out_dir, progress=None, **kw):
        # out_dir = <work>/<task>/teacher<ts>/<pipeline>/adapter
        calls["align"].append((out_dir.parent.parent.name, out_dir.parent.name, sorted({p.kind for p in pairs}),
                               len(pairs)))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "adapter_model.safetensors").write_bytes(out_dir.parent.name.encode())
        meta = {"steps": 1, "train_loss": 0.6, "pairs": {"total": len(pairs), "held_out": 1},
                "reward": {}, "reward_margin": {"on": "held_out", "pairs": 1, "before": 0.0, "after": 0.1,
                                                "accuracy_before": 0.0, "accuracy_after": 1.0},
                "train_tokens": 10, "seconds": 0.0}
        (out_dir / arte.dpo.METADATA_FILE).write_text(json.dumps(meta))
        return arte.dpo.AlignResult(out_dir, meta)

    def train(self, condition, teacher_seed, seed, records):
        calls["train"].append((condition, teacher_seed, seed, list(records)))
        return Path("/nonexistent-adapter"), None, {"steps": 1, "tokens": 1, "seconds": 0.0}

    def evaluate(self, name, fmt, items, demos, adapter, gguf):
        calls["evaluate"].append(name)
        return {k: {"outcomes": [int((i + len(name)) % 3 == 0) for i in range(len(items))],
                    "answers": ["x"] * len(items), "seconds": 0.0} for k in self.s.shots}

    monkeypatch.setattr(arte.pipeline, "align", align)
    monkeypatch.setattr(experiment_run, "load_hf", lambda ref, **kw: (None, CharTokenizer()))
    monkeypatch.setattr(_TaskRun, "train", train)
    monkeypatch.setattr(_TaskRun, "evaluate", evaluate)
    monkeypatch.setattr(experiment_run, "_convert_dir", lambda: Path("/nonexistent-convert"))
    return calls


def _settings(**kw) -> ExperimentSettings:
    pipeline = PipelineConfig(elicit=ElicitConfig(n_questions=12, styles=("plain", "rules"), seed=5),
                              tailor=TailorConfig(n_questions=20, check_samples=0, seed=5), n_validation=12, **kw)
    return ExperimentSettings(pipeline=pipeline, sft=SFTConfig(max_length=2048), seeds=2, teacher_seeds=2,
                              shots=(0,), holdout=6, n_boot=100)


def test_each_condition_trains_on_its_own_source(tmp_path: Path, fakes) -> None:
    doc = run_experiment([_task(tmp_path)], _settings(), tmp_path / "work", lambda *a: None)
    check_document(json.loads(json.dumps(doc)))
    (t,) = doc["tasks"]
    assert t["outcome"] == "compared" and t["teacher_seeds"] == [5, 6]
    assert t["eval_mode"] == "cot-choice" and t["pipelines"]["5"]["arte"]["score"]["summary"]["mode"] == "cot-choice"
    assert {c: v["outcome"] for c, v in t["conditions"].items()} == {
        c: "compared" for c in ("untuned", "original", "arte", "question-only", "rationale-only")}

    # DPO: one run per pair condition and teacher seed, on the pair kinds of the condition; none for original
    dpo = {(ts, c): (kinds, n) for ts, c, kinds, n in fakes["align"]}
    assert set(dpo) == {(f"teacher{ts}", c) for ts in (5, 6) for c in ("arte", "question-only", "rationale-only")}
    for ts in ("teacher5", "teacher6"):
        assert dpo[ts, "question-only"][0] == ["question"] and dpo[ts, "rationale-only"][0] == ["rationale"]
        assert dpo[ts, "arte"][0] == ["question", "rationale"]
        assert dpo[ts, "arte"][1] == dpo[ts, "question-only"][1] + dpo[ts, "rationale-only"][1]

    runs = {(c, ts, s): recs for c, ts, s, recs in fakes["train"]}
    assert set(runs) == {(c, ts, s) for c in ("original", "arte", "question-only", "rationale-only")
                         for ts in (5, 6) for s in (0, 1)}
    sizes = {len(r) for r in runs.values()}
    assert len(sizes) == 1 and sizes.pop() == t["data"]["used"] > 0   # equal training sizes
    for (c, ts, _s), recs in runs.items():
        if c == "original":
            continue
        # tailored by the teacher with this condition's own adapter, sampled with this teacher seed
        assert all(r.rationale.startswith(f"[{c}]") for r in recs), (c, recs[0].rationale)
    # the Original Teacher: the unaligned teacher's drafts of this teacher seed, the best-scored rationale of
    # each question (rules where the plain one is wrong), one per question, no adapter
    for ts in (5, 6):
        drafts = read_drafts(Path(t["work_dir"]) / f"teacher{ts}" / "arte" / "drafts.jsonl")
        by_id = {d.id: d for d in drafts}
        recs = runs["original", ts, 0]
        assert all(r.id in by_id and r.rationale.startswith("[base]") for r in recs)
        assert len({r.question_id for r in recs}) == len(recs)
        assert all(r.style == "rules" for r in recs if _category(r.question) == 2)
        assert all(r.answer == "implausible" for r in recs if _category(r.question) == 2)
        sel = t["conditions"]["original"]["teacher_seeds"][str(ts)]["selection"]
        n_q = len({d.question_id for d in drafts})
        assert sel["selected"] == n_q and sel["tied_best"] == sum(
            1 for q in {d.question_id: d.question for d in drafts}.values() if _category(q) != 2)
    # each teacher seed drafted with its own sampling seed, and the drafts differ
    assert {5, 6} <= set(fakes["seeds"])
    d5 = read_drafts(Path(t["work_dir"]) / "teacher5" / "arte" / "drafts.jsonl")
    d6 = read_drafts(Path(t["work_dir"]) / "teacher6" / "arte" / "drafts.jsonl")
    assert {d.rationale for d in d5}.isdisjoint({d.rationale for d in d6})
    # the intervals have the teacher seeds as their upper level
    acc = {a["condition"]: a for a in t["accuracy"]}
    assert acc["arte"]["n_groups"] == 2 and acc["arte"]["n_seeds"] == 4 and acc["untuned"]["n_groups"] is None
    # per teacher seed, the pair counts and the held-out reward of every DPO condition are reported
    q = t["conditions"]["question-only"]["teacher_seeds"]["5"]
    assert q["pairs"]["rationale"] == 0 and q["pairs"]["question"] >= 1 and q["reward_margin"]["on"] == "held_out"


def test_a_subset_of_conditions_runs_only_what_it_needs(tmp_path: Path, fakes) -> None:
    s = dataclasses.replace(_settings(), conditions=("original", "untuned"), teacher_seeds=1)
    doc = run_experiment([_task(tmp_path)], s, tmp_path / "work", lambda *a: None)
    (t,) = doc["tasks"]
    assert set(t["conditions"]) == {"untuned", "original"} and fakes["align"] == []
    assert set(t["pipelines"]["5"]["arte"]) == {"draft", "score", "pairs"}   # no DPO, no tailoring
    assert {c for c, *_ in fakes["train"]} == {"original"} and set(fakes["evaluate"]) == {
        "untuned", "original-t5-seed0", "original-t5-seed1"}
    check_document(doc)


def test_irt_item_selection_judges_the_drafts_on_the_kept_items(tmp_path: Path, fakes) -> None:
    doc = run_experiment([_task(tmp_path)], _settings(select_items=6), tmp_path / "work", lambda *a: None)
    (t,) = doc["tasks"]
    check_document(doc)
    pairs = t["pipelines"]["5"]["arte"]["pairs"]["summary"]
    assert pairs["selection"]["kept"] == 6 and pairs["selection"]["n_items"] == 12
    assert pairs["signal"]["items"] == {"min": 6.0, "max": 6.0}   # every draft judged on the 6 kept items
    sel = json.loads((Path(t["work_dir"]) / "teacher5" / "arte" / "selection.json").read_text())
    assert len(sel["selected"]) == 6 and sel["labels"] == {"implausible": 6}
