"""`arte draft` against a real OpenAI-style server on loopback, `arte pairs` on files: --json, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from arte.drafts import read_drafts
from arte.pairs import read_pairs
from arte.pipeline import write_scores
from arte_cli.cli import main
from tests.support.teacher_fakes import serve_chat

TASK_JSONL = "\n".join(json.dumps({"input": f"Player {i} scored a goal", "choices": ["plausible", "implausible"],
                                   "answer": i % 2}) for i in range(30))


@pytest.fixture()
def task_file(tmp_path: Path) -> Path:
    p = tmp_path / "sports.jsonl"
    p.write_text(TASK_JSONL)
    return p


def _reply(body: dict) -> str:
    text = body["messages"][-1]["content"]
    if "example questions" in text:
        n = body["seed"]
        return "\n".join(f"Question {k}: Athlete {n}-{k} made a play\nOptions: plausible, implausible"
                         for k in range(1, 6))
    system = body["messages"][0]["content"]
    return "Recall the rules. <ans>implausible</ans>" if system.startswith("First recall") else "Yes. <ans>plausible</ans>"


def test_draft_via_endpoint_then_pairs(tmp_path: Path, task_file: Path) -> None:
    runner = CliRunner()
    drafts_path = tmp_path / "drafts.jsonl"
    with serve_chat() as srv:
        srv.reply = _reply
        res = runner.invoke(main, ["draft", "--task", str(task_file), "--endpoint", srv.url, "--endpoint-model",
                                   "big", "--n-questions", "6", "--styles", "plain,rules", "--out", str(drafts_path),
                                   "--json"], env={"ARTE_TEACHER_API_KEY": "k"})
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)                      # exactly one JSON document on stdout
    assert doc["drafts"] == 12 and doc["questions"] == 6 and doc["teacher"] == "big"
    drafts = read_drafts(drafts_path)
    assert {d.style for d in drafts} == {"plain", "rules"}

    scores_path = tmp_path / "scores.json"
    write_scores(scores_path, "sports", "loglik", 10,
                 {d.id: (10.0, 9.0 if d.style == "rules" else 2.0 + i % 3) for i, d in enumerate(drafts)})
    pairs_path = tmp_path / "pairs.jsonl"
    res = runner.invoke(main, ["pairs", "--task", str(task_file), "--drafts", str(drafts_path), "--scores",
                               str(scores_path), "--out", str(pairs_path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rationale"] == 6 and doc["pairs"] == len(read_pairs(pairs_path)) == doc["rationale"] + doc["question"]
    sel = doc["selection"]
    assert sel["outcome"] == "pairs" and sel["n_pairs"] == doc["pairs"] and sel["comparisons"]["intervals"] == 6
    assert sel["signal"]["drafts"] == 12 and sel["criterion"] == {"confidence": 0.9, "z": 1.6449,
                                                                  "comparison": "paired", "min_margin": 0.0,
                                                                  "min_items": 1.0}

    # every draft alike: no pair is a result (exit 0, an empty file, the numbers in --json)
    write_scores(scores_path, "sports", "loglik", 10, {d.id: (10.0, 5.0) for d in drafts},
                 outcomes={d.id: [1] * 5 + [0] * 5 for d in drafts}, item_ids=[f"i{k}" for k in range(10)])
    res = runner.invoke(main, ["pairs", "--task", str(task_file), "--drafts", str(drafts_path), "--scores",
                               str(scores_path), "--out", str(pairs_path), "--json"])
    assert res.exit_code == 0, res.output
    sel = json.loads(res.stdout)["selection"]
    assert sel["outcome"] == "no_signal" and read_pairs(pairs_path) == []
    assert sel["skipped"]["rationale"] == {"tie": 6} and sel["signal"]["scores"]["spread"] == 0.0
    res = runner.invoke(main, ["pairs", "--task", str(task_file), "--drafts", str(drafts_path), "--scores",
                               str(scores_path), "--out", str(pairs_path), "--comparison", "vibes"])
    assert res.exit_code == 2 and "--comparison" in res.output


def test_bad_inputs_exit_with_input_code(tmp_path: Path, task_file: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "drafts.jsonl"
    bad.write_text('{"id": "a"}\n')
    res = runner.invoke(main, ["pairs", "--task", str(task_file), "--drafts", str(bad), "--scores",
                               str(tmp_path / "none.json"), "--out", str(tmp_path / "p.jsonl"), "--json"])
    assert res.exit_code == 3 and "line 1" in res.stderr and "question" in res.stderr and res.stdout == ""
    res = runner.invoke(main, ["draft", "--task", str(task_file), "--endpoint", "http://127.0.0.1:9",
                               "--endpoint-model", "m", "--styles", "plain,sonnet", "--out", str(bad)])
    assert res.exit_code == 3 and "styles" in res.stderr


def test_unreachable_endpoint_is_a_runtime_error(tmp_path: Path, task_file: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(main, ["draft", "--task", str(task_file), "--endpoint", f"http://127.0.0.1:{port}",
                                    "--endpoint-model", "m", "--endpoint-retries", "0", "--n-questions", "1", "--out",
                                    str(tmp_path / "d.jsonl"), "--json"])
    assert res.exit_code == 5 and f"127.0.0.1:{port}" in res.stderr
