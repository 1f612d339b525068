"""`arte experiment` end to end on the embedded model (teacher and student), tiny settings: the result
document is complete and recomputable, the plot is a PNG, and a rerun reuses every cached step; the task
may end compared, or reported without signal or training data, and each outcome is checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow

# the pipeline test's drafting settings (enough drafts for preference pairs), little else
ARGS = ["--n-questions", "10", "--styles", "plain,eliminate", "--validation", "12", "--question-tokens", "160",
        "--rationale-tokens", "64", "--tailor-questions", "5", "--check-samples", "0", "--align-steps", "2",
        "--align-batch-size", "2", "--seeds", "2", "--holdout", "6", "--shots", "0,1", "--sft-epochs", "2",
        "--sft-max-length", "256", "--bootstrap", "500", "--threads", "1", "--json",
        # point estimates: so few drafts rarely separate beyond noise, and this test is about the whole
        # way to training and evaluation (the noise rule has its unit tests); no signal is accepted too
        "--pair-confidence", "0"]


def test_experiment_end_to_end_then_cached(tmp_path: Path, default_model, bigbench_dir: Path) -> None:
    from arte_cli.cli import main
    from arte_cli.experiment_report import check_document

    task = str(bigbench_dir / "sports_understanding.json")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["experiment", "--task", task, "--out", str(out), *ARGS])
    assert res.exit_code == 0, res.output + res.stderr
    doc = json.loads(res.stdout)
    assert doc == json.loads((out / "experiment.json").read_text())
    check_document(doc)   # schema, and every interval recomputed from the per-item outcomes
    (t,) = doc["tasks"]
    assert t["task"] == "sports_understanding" and t["eval_mode"] == "cot-choice"
    assert set(t["pipeline"]) == {"draft", "score", "pairs", "align", "tailor"}
    assert t["cached"] == []
    png = (out / "experiment.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # Every outcome is well formed (which one depends on the 135M student's answers on this CPU): compared
    # conditions, or a task reported without signal or without training data, with its numbers.
    assert t["outcome"] in ("compared", "no_signal", "no_data")
    pairs = t["pipeline"]["pairs"]["summary"]
    assert pairs["signal"]["drafts"] >= 1 and pairs["n_pairs"] == sum(pairs["counts"].values())
    if t["outcome"] == "no_signal":
        assert pairs["outcome"] == "no_signal" and t["runs"] == [] and "no signal" in t["reason"]
        assert t["signal"] == pairs["signal"] and t["pipeline"]["tailor"]["stopped"] == "no_signal"
        n_cached = 3                  # draft, score, pairs
    elif t["outcome"] == "no_data":
        assert t["runs"] == [] and t["data"]["used"] == 0 and "no usable training examples" in t["reason"]
        n_cached = 5 + 1              # pipeline stages, original data
    else:
        assert t["chance"] == 0.5 and len(t["holdout_ids"]) == 6 and len(t["demo_ids"]) == 1
        runs = {(r["condition"], r["seed"], r["shots"]) for r in t["runs"]}
        assert runs == {("untuned", None, 0), ("untuned", None, 1)} | {
            (c, s, k) for c in ("original", "arte") for s in (0, 1) for k in (0, 1)}
        d = t["data"]
        assert d["used"] >= 1 and d["used"] == min(d["fit"].values())
        assert set(t["training"]) == {"original-seed0", "original-seed1", "arte-seed0", "arte-seed1"}
        assert all(s["steps"] >= 2 for s in t["training"].values())
        assert len(png) > 10_000
        n_cached = 5 + 1 + 4 + 5      # pipeline stages, original data, SFT runs, evaluations

    again = CliRunner().invoke(main, ["experiment", "--task", task, "--out", str(out), *ARGS])
    assert again.exit_code == 0, again.output + again.stderr
    doc2 = json.loads(again.stdout)
    (t2,) = doc2["tasks"]
    assert len(t2["cached"]) == n_cached and t2["outcome"] == t["outcome"]
    assert t2["runs"] == t["runs"] and t2.get("accuracy") == t.get("accuracy")
    assert doc2["seconds"] < 60
