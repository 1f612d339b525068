"""``edge-agent train``: the thin CLI (options, errors, exit codes) without running a model."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edge_agent.cli import main
from edge_agent.errors import ExitCode


def test_train_is_a_command_with_documented_options() -> None:
    out = CliRunner().invoke(main, ["train", "--help"])
    assert out.exit_code == 0
    for opt in ("--data", "--task", "--time-budget", "--memory-budget", "--precision", "--json", "--significance",
                "--shots"):
        assert opt in out.output


def test_bad_shots_is_an_input_error(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["train", "--data", "d.jsonl", "--task", "t.json", "--shots", "zero"])
    assert out.exit_code == ExitCode.INPUT and "shots" in out.output


def test_a_malformed_data_file_is_refused_with_its_line(tmp_path: Path) -> None:
    task = tmp_path / "task.jsonl"
    task.write_text("\n".join(json.dumps({"input": f"q{i}", "target": "a"}) for i in range(4)))
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "x", "question": "q", "rationale": "r"}\n')
    out = CliRunner().invoke(main, ["train", "--data", str(data), "--task", str(task), "--model", str(tmp_path)])
    assert out.exit_code == ExitCode.INPUT
    assert "line 1" in out.output and "answer" in out.output


def test_an_invalid_setting_names_its_field(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["train", "--data", "d.jsonl", "--task", "t.json", "--shots", "3",
                                    "--batch-size", "4", "--lora-alpha", "-1"])
    assert out.exit_code == ExitCode.INPUT and "alpha" in out.output


def test_an_unknown_precision_is_a_usage_error() -> None:
    out = CliRunner().invoke(main, ["train", "--data", "d.jsonl", "--task", "t.json", "--precision", "fp16"])
    assert out.exit_code == ExitCode.USAGE and "--precision" in out.output and "bf16" in out.output
