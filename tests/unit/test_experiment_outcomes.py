"""`arte experiment` over two tasks with fakes (scripted teacher, copying student, no training): a task whose
drafts give no preference pair is reported as "no signal" with its numbers (untuned and the Original Teacher,
which need no pair, still run), and the next task still runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arte.elicit import ElicitConfig
from arte.models import ModelRef
from arte.pipeline import PipelineConfig
from arte.prompts import RATIONALE_STYLES, question_block
from arte.sft import SFTConfig
from arte.tailor import TailorConfig
from arte_cli import experiment_run
from arte_cli.experiment_report import brief, check_document, plot, table
from arte_cli.experiment_run import ExperimentSettings, _Models, _TaskRun, run_experiment
from tests.support.sft_fakes import CharTokenizer
from tests.support.teacher_fakes import LastAnswerCopyingStudent, ScriptedTeacher, is_question_prompt


def _task(tmp_path: Path, name: str, description: str) -> Path:
    """Every item is implausible: with the copying student, drafts answering "implausible" win."""
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps({"name": name, "description": description, "examples": [
        {"input": f"Player {i} did thing {i}", "target_scores": {"plausible": 0, "implausible": 1}}
        for i in range(40)]}))
    return p


def _teacher() -> ScriptedTeacher:
    counter = iter(range(1_000_000))

    def reply(messages, kw, i):
        if is_question_prompt(messages):
            n = next(counter)
            return question_block([f"Statement: athlete {n}-{k} made a play\nOptions: plausible, implausible"
                                   for k in range(5)])
        style = next((k for k, v in RATIONALE_STYLES.items() if v == messages[0]["content"]), "plain")
        flat = "Flat task" in messages[-1]["content"]   # the first task: every rationale answers alike
        answer = "implausible" if style == "rules" and not flat else "plausible"
        return f"Thinking in the {style} way about this play. <ans>{answer}</ans>"

    return ScriptedTeacher(reply)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    import arte.backends.hf
    import arte.dpo
    import arte.pipeline

    calls: dict[str, list] = {"align": [], "train": [], "evaluate": []}
    ref = ModelRef("gguf", Path("/nonexistent.gguf"), "fake")
    monkeypatch.setattr(experiment_run, "_models", lambda s: _Models(
        ref, ref, "llama", lambda adapter: _teacher(), LastAnswerCopyingStudent,
        {"teacher": "t", "student": "s", "tailor_teacher": "tt"}))

    def align(model, pairs, config, out_dir, progress=None, **kw):
        calls["align"].append(len(pairs))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "adapter_model.safetensors").write_bytes(b"fake")
        meta = {"steps": 1, "train_loss": 0.6, "pairs": {"total": len(pairs), "held_out": 0},
                "reward": {"train": {"pairs": len(pairs), "before": {"margin": 0.0}, "after": {"margin": 0.1}}},
                "reward_margin": {"before": 0.0, "after": 0.1, "on": "train"}, "train_tokens": 10, "seconds": 0.0}
        (out_dir / arte.dpo.METADATA_FILE).write_text(json.dumps(meta))
        return arte.dpo.AlignResult(out_dir, meta)

    def train(self, condition, teacher_seed, seed, records):
        calls["train"].append((self.task.name, condition, seed, len(records)))
        return Path("/nonexistent-adapter"), None, {"steps": 1, "tokens": 1, "seconds": 0.0}

    def evaluate(self, name, fmt, items, demos, adapter, gguf):
        calls["evaluate"].append((self.task.name, name))
        return {k: {"outcomes": [int(i % 2 == 0) for i in range(len(items))], "answers": ["x"] * len(items),
                    "seconds": 0.0} for k in self.s.shots}

    monkeypatch.setattr(arte.pipeline, "align", align)
    monkeypatch.setattr(experiment_run, "load_hf", lambda ref, **kw: (None, CharTokenizer()))
    monkeypatch.setattr(_TaskRun, "train", train)
    monkeypatch.setattr(_TaskRun, "evaluate", evaluate)
    monkeypatch.setattr(experiment_run, "_convert_dir", lambda: Path("/nonexistent-convert"))
    return calls


def _settings(max_length: int = 2048) -> ExperimentSettings:
    pipeline = PipelineConfig(elicit=ElicitConfig(n_questions=8, styles=("plain", "rules")),
                              tailor=TailorConfig(n_questions=4, check_samples=0), n_validation=12)
    return ExperimentSettings(pipeline=pipeline, sft=SFTConfig(max_length=max_length), seeds=1, teacher_seeds=2,
                              shots=(0,), holdout=6, n_boot=100)


def test_a_task_without_signal_is_reported_and_the_next_task_runs(tmp_path: Path, fakes) -> None:
    flat = _task(tmp_path, "flat", "Flat task: judge plausibility.")
    sharp = _task(tmp_path, "sharp", "Sharp task: judge plausibility.")
    doc = run_experiment([flat, sharp], _settings(), tmp_path / "work", lambda *a: None)
    first, second = doc["tasks"]
    assert first["task"] == "flat" and first["outcome"] == "no_signal" and "no signal" in first["reason"]
    assert first["reason"].startswith("arte, question-only, rationale-only: teacher seed 0: no signal")
    assert first["reason"].count("teacher seed 0") == 1   # one reason, not one per condition
    assert first["teacher_seeds"] == [0, 1]
    for c in ("arte", "question-only", "rationale-only"):
        assert first["conditions"][c]["outcome"] == "no_signal" and "teacher seed 0" in first["conditions"][c]["reason"]
    sig = first["signal"]["0"]
    assert sig["scores"]["spread"] == 0.0 and sig["answers"] == {"plausible": 16} and sig["items"]["min"] == 12.0
    main = first["pipelines"]["0"]["arte"]
    assert main["pairs"]["summary"]["skipped"]["rationale"] == {"tie": 8}
    assert main["align"]["stopped"] == "no_signal" and main["tailor"]["stopped"] == "no_signal"
    assert set(first["pipelines"]["0"]) == {"arte"}   # no pair at all: no ablation branch is run
    # the conditions that need no pair still ran on the flat task: untuned and the Original Teacher
    assert {r["condition"] for r in first["runs"]} == {"untuned", "original"}
    assert {a["condition"] for a in first["accuracy"]} == {"untuned", "original"}
    assert {(t, c) for t, c, _s, _n in fakes["train"] if t == "flat"} == {("flat", "original")}
    # the second task ran the whole way: DPO on its (rationale) pairs per teacher seed; no question pairs
    assert second["task"] == "sharp" and second["outcome"] == "compared"
    conds = second["conditions"]
    assert conds["arte"]["outcome"] == conds["rationale-only"]["outcome"] == "compared"
    assert conds["question-only"]["outcome"] == "no_signal"
    assert second["pipelines"]["1"]["arte"]["pairs"]["summary"]["n_pairs"] == 8
    assert fakes["align"] == [8, 8, 8, 8]   # per teacher seed: ARTE, then Rationale Only
    assert {c for t, c, _s, _n in fakes["train"] if t == "sharp"} == {"original", "arte", "rationale-only"}
    assert {a["condition"] for a in second["accuracy"]} == {"untuned", "original", "arte", "rationale-only"}
    assert {t for t, _ in fakes["evaluate"]} == {"flat", "sharp"}
    check_document(json.loads(json.dumps(doc)))
    text = table(doc)
    assert "flat: no signal (untuned and Original Teacher still compared above)" in text and "sharp" in text
    assert "Question Only: no signal" in text
    line = brief(doc, tmp_path / "experiment.json")
    assert line["tasks"]["flat"]["outcome"] == "no_signal" and line["tasks"]["sharp"]["outcome"] == "compared"
    assert line["tasks"]["sharp"]["conditions"]["question-only"] == "no_signal"
    assert plot(doc, tmp_path / "experiment.png").read_bytes()[:4] == b"\x89PNG"

    # a rerun reuses the first task's cached stages and stops at the same outcome
    again = run_experiment([flat], _settings(), tmp_path / "work", lambda *a: None)
    (t,) = again["tasks"]
    assert t["outcome"] == "no_signal" and t["cached"] == [f"teacher{ts}/arte/{st}" for ts in (0, 1)
                                                             for st in ("draft", "score", "pairs")]
    assert plot(again, tmp_path / "only.png").read_bytes()[:4] == b"\x89PNG"


def test_without_the_original_teacher_a_task_without_signal_has_no_runs(tmp_path: Path, fakes) -> None:
    import dataclasses

    s = dataclasses.replace(_settings(), conditions=("untuned", "arte"))
    doc = run_experiment([_task(tmp_path, "flat", "Flat task.")], s, tmp_path / "work", lambda *a: None)
    (t,) = doc["tasks"]
    assert t["outcome"] == "no_signal" and t["runs"] == [] and fakes["train"] == [] and fakes["evaluate"] == []
    check_document(doc)
    assert "flat: no signal: arte: teacher seed 0" in table(doc)
    assert plot(doc, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_a_task_without_training_data_is_reported_as_no_data(tmp_path: Path, fakes) -> None:
    """Every tailored example is longer than the SFT rows: nothing to train on is a result too."""
    doc = run_experiment([_task(tmp_path, "sharp", "Sharp task.")], _settings(max_length=16), tmp_path / "work",
                         lambda *a: None)
    (t,) = doc["tasks"]
    assert t["outcome"] == "no_data" and t["runs"] == [] and "no usable training examples" in t["reason"]
    assert t["data"]["used"] == 0 and t["data"]["kept"]["arte@t0"] == 4 and t["data"]["kept"]["original@t1"] == 8
    assert fakes["train"] == []
    check_document(doc)
    assert "sharp: no data: " in table(doc)


def test_check_document_refuses_an_unknown_outcome_or_a_no_signal_task_without_numbers(tmp_path: Path) -> None:
    from arte.errors import ConfigError
    from arte_cli.experiment_report import FORMAT

    task = {"task": "flat", "outcome": "no_signal", "reason": "no signal: ...", "pipelines": {"0": {}},
            "teacher_seeds": [0], "conditions": {"arte": {"outcome": "no_signal"}},
            "signal": {"0": {"scores": None}}, "runs": []}
    doc = {"format": FORMAT, "settings": {"seeds": 1}, "models": {}, "seed_varies": "", "tasks": [task],
           "bootstrap": {"n_boot": 100, "level": 0.95, "seed": 0}, "seconds": 1.0}
    check_document(doc)
    for bad, field in (({"outcome": "meh"}, "tasks[0].outcome"), ({"signal": None}, "tasks[0].signal"),
                       ({"conditions": {"arte": {"outcome": "compared"}}}, "tasks[0].conditions"),
                       ({"outcome": "no_data", "data": {"used": 0}, "runs": [{"condition": "arte"}]}, "tasks[0].runs")):
        with pytest.raises(ConfigError) as e:
            check_document({**doc, "tasks": [{**task, **bad}]})
        assert e.value.field == field


def test_pair_confidence_is_an_option_checked_before_anything_runs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from arte_cli.cli import main

    res = CliRunner().invoke(main, ["experiment", "--task", str(_task(tmp_path, "sharp", "Sharp.")), "--out",
                                    str(tmp_path / "out"), "--pair-confidence", "1.5"])
    assert res.exit_code == 2 and "--pair-confidence" in res.output and not (tmp_path / "out").exists()
    assert "--pair-confidence" in CliRunner().invoke(main, ["pipeline", "--help"]).output
