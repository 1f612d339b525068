"""``edge-agent train`` end to end on the real default model, small: a run stopped by its time budget is
incomplete and keeps its checkpoints; the same command again resumes, exports, evaluates before/after
and stores a version with its manifest (activated only if the keep rule says so)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def edge_agent(*args: str) -> subprocess.CompletedProcess:
    """The real command in its own process: its memory budget must not see this test process's memory."""
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          timeout=900, check=False)


def test_train_resumes_after_its_time_budget_then_stores_a_verdict(default_model, bigbench_dir, tmp_path: Path) -> None:
    from arte.adapters import AdapterStore
    from arte.drafts import write_drafts
    from arte.sft_data import templated_records
    from arte.tasks import load_task, split_task

    task_path = bigbench_dir / "sports_understanding.json"
    task = load_task(task_path)
    data = tmp_path / "tailored.jsonl"
    write_drafts(data, templated_records(task, split_task(task, seed=0, n_seeds=0, validation=0.5).validation[:12]))
    args = ["train", "--data", str(data), "--task", str(task_path), "--steps", "2", "--batch-size", "2",
            "--max-length", "192", "--holdout", "6", "--shots", "0", "--eval-mode", "loglik", "--threads", "1",
            "--memory-budget", "1536", "--adapters", str(tmp_path / "adapters"), "--work-dir", str(tmp_path / "work"),
            "--json"]
    first = edge_agent(*args, "--time-budget", "0.001")
    assert first.returncode == 0, first.stderr[-2000:]
    doc = json.loads(first.stdout)
    assert doc["status"] == "incomplete" and doc["sft"]["steps"] == 1 and doc["version"] is None
    assert (tmp_path / "work" / "sft" / "checkpoints").is_dir()

    second = edge_agent(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    doc = json.loads(second.stdout)
    assert doc["sft"]["resumed_from"] == 1 and doc["sft"]["steps"] == 2
    assert doc["status"] in ("kept", "rejected") and doc["version"] == "v0001"
    assert doc["before"]["0"]["n_items"] == doc["after"]["0"]["n_items"] == 6
    assert doc["sft"]["peak_rss_mb"] < 2048
    store = AdapterStore(tmp_path / "adapters")
    v = store.verify("v0001")
    assert set(v.manifest["files"]) == {"adapter.gguf", "adapter_model.safetensors", "adapter_config.json"}
    assert v.manifest["base_model"]["sha256"] == default_model.sha256
    # the adapter names a base another machine can resolve: the hub model the default quantizes
    hub = {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": None}
    assert {k: v.manifest["base_model"][k] for k in hub} == hub
    assert json.loads(v.file("adapter_config.json").read_text())["base_model_name_or_path"] == hub["id"]
    assert v.manifest["decision"]["keep"] == (doc["status"] == "kept")
    assert (store.active() is not None) == (doc["status"] == "kept")
