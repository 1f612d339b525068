"""The llama.cpp self-check on the real model and the installed build: a real batch in a child process."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from arte.backends.llama_check import self_check

pytestmark = pytest.mark.slow


def test_the_installed_build_passes_a_real_batch(default_model) -> None:
    r = self_check(default_model.path, n_threads=1, timeout_s=600)
    assert r.ok, r.message
    assert r.stage == "done" and r.returncode == 0 and r.signal is None
    assert r.result["prefix_tokens"] >= 64 and r.result["batch_tokens"] >= 64 + r.result["sequences"]
    assert r.result["sequences"] == 8 and r.result["parallel"] == 4
    assert r.result["quantization"] == "Q4_1"
    assert all(lp < 0 for lp in r.result["logprobs"])
    assert r.build["version"] and "CPU" in r.build["system_info"]
    assert r.not_reported == [], "the build uses features this CPU does not report"


def test_arte_models_check_json(default_model) -> None:
    from arte_cli.cli import main as arte

    out = CliRunner().invoke(arte, ["models", "check", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["model"] == str(default_model.path) and doc["build"]["cpu_features"]
