"""`arte experiment` bookkeeping without models: option validation (errors name the option, nothing is
loaded), equal training sizes, the step cache, the result document (schema, intervals recomputable from the
per-item outcomes, paired differences), the table, the machine line and the plot."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from arte.errors import ConfigError
from arte.stats import bootstrap_ci
from arte_cli.cli import main
from arte_cli.experiment_report import FORMAT, brief, check_document, plot, summarize, table
from arte_cli.experiment_run import SEED_VARIES, _Cache, equalize

N_ITEMS = 60


def _task_file(tmp_path: Path, name: str = "yesno", choices: bool = True) -> Path:
    p = tmp_path / f"{name}.jsonl"
    rows = []
    for i in range(30):
        row = {"input": f"question {i}?"}
        row.update({"choices": ["yes", "no"], "answer": i % 2} if choices else {"target": str(i)})
        rows.append(json.dumps(row))
    p.write_text("\n".join(rows))
    return p


@pytest.mark.parametrize("args, option", [
    (["--seeds", "0"], "--seeds"),
    (["--teacher-seeds", "0"], "--teacher-seeds"),
    (["--holdout", "0"], "--holdout"),
    (["--shots", "0,x"], "--shots"),
    (["--shots", "0,0"], "--shots"),
    (["--sft-lr", "-1"], "--sft-lr"),
    (["--sft-max-length", "4"], "--sft-max-length"),
    (["--align-beta", "0"], "--align-beta"),
    (["--align-steps", "0"], "--align-steps"),
    (["--styles", "poetic"], "--styles"),
    (["--check-samples", "99"], "--check-samples"),
    (["--bootstrap", "5"], "--bootstrap"),
    (["--eval-mode", "vibes"], "--eval-mode"),
])
def test_invalid_options_are_usage_errors_naming_the_option(tmp_path: Path, args: list[str], option: str) -> None:
    res = CliRunner().invoke(main, ["experiment", "--task", str(_task_file(tmp_path)), "--out",
                                    str(tmp_path / "out"), *args])
    assert res.exit_code == 2, res.output
    assert option in res.output
    assert not (tmp_path / "out").exists()   # refused before anything ran


def test_task_errors_name_the_task_option(tmp_path: Path) -> None:
    yesno = _task_file(tmp_path)
    exact = _task_file(tmp_path, "counting", choices=False)
    cases = [
        (["--task", str(tmp_path / "missing.json")], "--task", "no such file"),
        (["--task", str(yesno), "--task", str(yesno)], "--task", "both named 'yesno'"),
        (["--task", str(exact), "--eval-mode", "loglik"], "--eval-mode", "exact_match"),
    ]
    for args, option, problem in cases:
        res = CliRunner().invoke(main, ["experiment", "--out", str(tmp_path / "out"), *args])
        assert res.exit_code == 2 and option in res.output and problem in res.output, res.output


def test_experiment_is_listed_and_documented() -> None:
    res = CliRunner().invoke(main, ["experiment", "--help"])
    assert res.exit_code == 0
    for option in ("--task", "--seeds", "--teacher-seeds", "--conditions", "--select-items", "--eval-mode",
                   "--holdout", "--train-size", "--json"):
        assert option in res.output
    flat = " ".join(res.output.split())   # click wraps the help text
    for name in ("untuned", "Original Teacher", "ARTE", "Question Only", "Rationale Only", "question-only",
                 "rationale-only"):
        assert name in flat


@pytest.mark.parametrize("value", ["arte,vibes", "", "untuned", "arte,arte"])
def test_conditions_are_checked_before_anything_runs(tmp_path: Path, value: str) -> None:
    res = CliRunner().invoke(main, ["experiment", "--task", str(_task_file(tmp_path)), "--out",
                                    str(tmp_path / "out"), "--conditions", value])
    assert res.exit_code == 2 and "--conditions" in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_select_items_must_leave_fewer_than_the_validation_items(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["experiment", "--task", str(_task_file(tmp_path)), "--out",
                                    str(tmp_path / "out"), "--validation", "8", "--select-items", "8"])
    assert res.exit_code == 2 and "--select-items" in res.output, res.output
    assert "--select-items" in CliRunner().invoke(main, ["pipeline", "--help"]).output   # the pipeline has it too


def test_equalize_truncates_to_the_smaller_dataset_in_order() -> None:
    data, n = equalize({"original": list("abcdef"), "arte": list("xyz")})
    assert n == 3 and data == {"original": list("abc"), "arte": list("xyz")}
    data, n = equalize({"original": list("abcdef"), "arte": list("xyz")}, limit=2)
    assert n == 2 and data["original"] == ["a", "b"] and data["arte"] == ["x", "y"]
    assert equalize({"original": [], "arte": list("xy")})[1] == 0


def test_cache_is_valid_only_for_its_key(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "untuned.json"
    assert _Cache(path, "k1").load() is None
    _Cache(path, "k1").save({"results": {"0": [1, 0]}})
    assert _Cache(path, "k1").load() == {"results": {"0": [1, 0]}, "key": "k1"}
    assert _Cache(path, "k2").load() is None
    path.write_text("{not json")
    assert _Cache(path, "k1").load() is None


def _runs(seed: int = 0) -> list[dict]:
    """Untuned at ~50%, original ~60% (with seed noise), arte = original plus the first 10 items, which the
    others get wrong; 2 teacher seeds x 2 SFT seeds (3 rows of teacher seed 0 for arte: unbalanced is fine)."""
    rng = np.random.default_rng(seed)
    truth = rng.random(N_ITEMS)
    truth[:10] = 0.95
    runs = [{"condition": "untuned", "teacher_seed": None, "seed": None, "shots": k,
             "outcomes": [int(t < 0.5) for t in truth], "answers": ["x"] * N_ITEMS} for k in (0, 3)]
    for ts in (0, 1):
        for s in range(2):
            noise = rng.random(N_ITEMS) * 0.1
            for k in (0, 3):
                orig = [int(t + n < 0.6) for t, n in zip(truth, noise)]
                arte = [max(o, int(i < 10)) for i, o in enumerate(orig)]
                runs += [{"condition": "original", "teacher_seed": ts, "seed": s, "shots": k, "outcomes": orig,
                          "answers": ["x"] * N_ITEMS},
                         {"condition": "arte", "teacher_seed": ts, "seed": s, "shots": k, "outcomes": arte,
                          "answers": ["x"] * N_ITEMS}]
    return runs


def _document() -> dict:
    runs = _runs()
    task = {"task": "yesno", "source": "yesno.jsonl", "sha256": "0" * 64, "kind": "multiple_choice",
            "eval_mode": "loglik", "chance": 0.5, "holdout_ids": [f"i{i}" for i in range(N_ITEMS)],
            "demo_ids": ["gold-a", "gold-b", "gold-c"],
            "data": {"kept": {"original@t0": 30, "arte@t0": 25}, "fit": {"original@t0": 28, "arte@t0": 25}, "used": 25,
                     "dropped_too_long": {"original@t0": 2, "arte@t0": 0}, "truncated": {"original@t0": 3, "arte@t0": 0},
                     "note": "…"},
            "outcome": "compared", "teacher_seeds": [0, 1],
            "conditions": {"untuned": {"outcome": "compared"},
                           "original": {"outcome": "compared", "teacher_seeds": {
                               "0": {"outcome": "compared", "selection": {"selected": 12, "tied_best": 3}}}},
                           "arte": {"outcome": "compared", "teacher_seeds": {
                               "0": {"outcome": "compared", "pairs": {"question": 1, "rationale": 5},
                                     "reward_margin": {"on": "held_out", "pairs": 2, "before": 0.0, "after": 0.2,
                                                       "accuracy_before": 0.5, "accuracy_after": 1.0}}}},
                           "question-only": {"outcome": "no_signal", "reason": "teacher seed 0: no signal"}},
            "pipelines": {"0": {}, "1": {}}, "training": {}, "runs": runs, "seconds": {"total": 1.0},
            "compute_seconds": {}, "cached": []}
    task.update(summarize(runs, (0, 3), n_boot=500, seed=0))
    # round-trip through JSON, as a reader of the file would get it
    return json.loads(json.dumps({"format": FORMAT, "created": "now", "settings": {"seeds": 2, "teacher_seeds": 2},
                                  "models": {"teacher": "t", "student": "s", "eval_backend": "llama"},
                                  "seed_varies": SEED_VARIES,
                                  "bootstrap": {"n_boot": 500, "level": 0.95, "seed": 0, "method": "…"},
                                  "tasks": [task], "seconds": 1.0}))


def test_document_is_recomputable_from_its_runs() -> None:
    doc = _document()
    check_document(doc)
    bad = copy.deepcopy(doc)
    bad["tasks"][0]["runs"][3]["outcomes"][0] ^= 1   # one outcome changed: the intervals no longer match
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.(accuracy|differences)"):
        check_document(bad)
    bad = copy.deepcopy(doc)
    bad["tasks"][0]["runs"][0]["outcomes"] = [1, 0]
    with pytest.raises(ConfigError, match=r"runs\[0\]\.outcomes"):
        check_document(bad)
    bad = copy.deepcopy(doc)
    bad["tasks"][0]["runs"][0]["seed"] = 1
    with pytest.raises(ConfigError, match=r"runs\[0\]\.seed"):
        check_document(bad)
    bad = copy.deepcopy(doc)
    bad["tasks"][0]["runs"][3]["teacher_seed"] = None
    with pytest.raises(ConfigError, match=r"runs\[3\]\.teacher_seed"):
        check_document(bad)
    bad = copy.deepcopy(doc)
    bad["tasks"][0]["runs"][3]["condition"] = "question-only"   # a condition without signal has no runs
    with pytest.raises(ConfigError, match=r"runs\[3\]\.condition"):
        check_document(bad)
    bad = copy.deepcopy(doc)
    for r in bad["tasks"][0]["runs"]:   # the teacher seeds relabelled: the intervals' groups change
        if r["teacher_seed"] == 1 and r["seed"] == 1:
            r["teacher_seed"] = 0
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.(accuracy|differences)"):
        check_document(bad)
    bad = copy.deepcopy(doc)
    del bad["tasks"][0]["holdout_ids"]
    with pytest.raises(ConfigError, match="holdout_ids"):
        check_document(bad)
    with pytest.raises(ConfigError, match="format"):
        check_document({**doc, "format": "other/1"})


def test_summary_has_every_condition_and_the_paired_differences() -> None:
    doc = _document()
    t = doc["tasks"][0]
    assert {(a["condition"], a["shots"]) for a in t["accuracy"]} == {
        (c, k) for c in ("untuned", "original", "arte") for k in (0, 3)}
    assert {(d["a"], d["b"]) for d in t["differences"]} == {("arte", "original"), ("arte", "untuned"),
                                                            ("original", "untuned")}   # only conditions with runs
    acc = {(a["condition"], a["shots"]): a for a in t["accuracy"]}
    assert acc["untuned", 0]["n_seeds"] == 1 and acc["untuned", 0]["n_groups"] is None
    assert acc["arte", 0]["n_seeds"] == 4 and acc["arte", 0]["n_groups"] == 2
    diff = {(d["a"], d["b"], d["shots"]): d for d in t["differences"]}
    d = diff["arte", "original", 0]
    assert d["estimate"] == pytest.approx(acc["arte", 0]["estimate"] - acc["original", 0]["estimate"], abs=2e-6)
    assert d["n_seeds"] == 4 and d["n_seeds_b"] == 4 and d["n_groups"] == d["n_groups_b"] == 2
    # arte never loses an item to original and wins some: the paired interval is above 0 and narrower than
    # an unpaired one built from the two conditions' own intervals
    assert 0 < d["low"] <= d["estimate"] <= d["high"]
    unpaired = np.hypot(acc["arte", 0]["high"] - acc["arte", 0]["low"],
                        acc["original", 0]["high"] - acc["original", 0]["low"])
    assert d["high"] - d["low"] < 0.6 * unpaired
    # the same number bootstrap_ci gives on the matrices, with the teacher seeds as the groups of rows
    rows = {c: sorted((r for r in t["runs"] if r["condition"] == c and r["shots"] == 0),
                      key=lambda r: (r["teacher_seed"], r["seed"])) for c in ("arte", "original")}
    m = {c: np.array([r["outcomes"] for r in v]) for c, v in rows.items()}
    g = {c: [r["teacher_seed"] for r in v] for c, v in rows.items()}
    direct = bootstrap_ci(m["arte"], m["original"], n_boot=500, seed=0, groups_a=g["arte"], groups_b=g["original"])
    assert (d["low"], d["high"]) == (round(direct.low, 6), round(direct.high, 6))


def test_identical_conditions_have_a_zero_difference() -> None:
    runs = [r for r in _runs() if r["condition"] == "untuned" or (r["seed"] == 0 and r["teacher_seed"] == 0)]
    for r in runs:
        if r["condition"] == "arte":
            r["outcomes"] = next(o["outcomes"] for o in runs if o["condition"] == "original"
                                 and o["shots"] == r["shots"])
    diff = summarize(runs, (0,), n_boot=200)["differences"][0]
    assert (diff["a"], diff["b"]) == ("arte", "original")
    assert diff["estimate"] == diff["low"] == diff["high"] == 0.0


def test_table_brief_and_plot(tmp_path: Path) -> None:
    doc = _document()
    text = table(doc)
    assert "yesno" in text and "- Original Teacher" in text and "95% CI" in text and "2 teacher seeds" in text
    assert len([line for line in text.splitlines() if line.startswith("yesno ")]) == 6   # 3 conditions x 2 shots
    assert "Question Only: no signal" in text and "accuracy 0.50 -> 1.00" in text and "3 with a tied best" in text
    line = brief(doc, tmp_path / "experiment.json")
    assert json.loads(json.dumps(line))["tasks"]["yesno"]["train_size"] == 25
    assert {k for k in line["tasks"]["yesno"]["differences"] if k.startswith("arte-original")} == {
        "arte-original@0", "arte-original@3"}
    assert line["tasks"]["yesno"]["conditions"]["question-only"] == "no_signal"
    png = plot(doc, tmp_path / "experiment.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
