"""`arte selftest alignment` with the real embedded model at tiny sizes: drafts from llama.cpp, planted
scores, real DPO, held-out samples on torch before and after. Asserts only that the run and its outputs
are well formed: whether a 135M teacher moves in a few DPO steps depends on the CPU's floating point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from arte_cli.cli import main

pytestmark = pytest.mark.slow


def test_selftest_alignment_tiny_run_is_well_formed(tmp_path: Path, default_model, n_threads: int) -> None:
    work = tmp_path / "st"
    r = CliRunner().invoke(main, ["selftest", "alignment", "--work-dir", str(work), "--rules", "short",
                                  "--questions", "3", "--styles", "plain,expert", "--rationale-tokens", "32",
                                  "--heldout", "2", "--sample-seeds", "1", "--epochs", "1", "--max-length", "256",
                                  "--threads", str(n_threads), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["verdict"] in ("pass", "fail")
    assert [v["name"] for v in doc["variants"]] == ["short", "short-reversed", "short-null"]
    for v in doc["variants"]:
        assert v["outcome"] in ("pairs", "no_signal")
        assert 0.0 <= v["original_rate"] <= 1.0
        if v["outcome"] == "pairs":
            lift = v["lift"]
            assert 0.0 <= v["aligned_rate"] <= 1.0 and lift["low"] <= lift["estimate"] <= lift["high"]
            assert math.isclose(lift["estimate"], v["aligned_rate"] - v["original_rate"], abs_tol=1e-6)
            assert (work / v["name"] / "adapter" / "adapter_model.safetensors").is_file()
        else:
            assert v["lift"] is None
    assert doc["thresholds"]["max_words"] >= 1 and doc["drafts"]["kept"] > 0
    assert Path(doc["plot"]).is_file() and Path(doc["plot"]).read_bytes()[:4] == b"\x89PNG"
