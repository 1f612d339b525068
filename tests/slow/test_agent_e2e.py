"""End to end with the real embedded model: `edge-agent enroll` then `edge-agent run --once` (subprocesses,
llama.cpp scoring on 2 threads) against `arte-server serve` on loopback; `status` shows exactly what went.
The same iteration downloads the tailored dataset and really trains: LoRA SFT within the laptop profile, GGUF
export, before/after evaluation on the private holdout with llama.cpp, keep or reject, metrics sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live_server import ROOT, LiveServer  # noqa: E402

pytestmark = pytest.mark.slow


def agent(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "edge-agent")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=600)


def test_enroll_and_run_once_with_the_real_model(tmp_path: Path, default_model, bigbench_dir: Path,
                                                 data_dir: Path) -> None:
    task = json.loads((bigbench_dir / "sports_understanding.json").read_text())
    private = tmp_path / "private_sports.jsonl"   # 16 labelled items: 8 to score on, 8 held out
    private.write_text("".join(json.dumps({"input": ex["input"], "choices": list(ex["target_scores"]),
                                           "answer": max(ex["target_scores"], key=ex["target_scores"].get)}) + "\n"
                               for ex in task["examples"][:16]))
    drafts = [json.loads(line) for line in (data_dir / "drafts_sports_understanding.jsonl").open()][:2]

    server = LiveServer(tmp_path)
    try:
        cohort, token = server.cohort_with_token()
        round_id = server.open_round(cohort, drafts)
        server.publish(cohort, (data_dir / "drafts_sports_understanding.jsonl").read_text())
        env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(tmp_path / "agent"),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        r = agent(["enroll", "--server", server.url, "--token", token, "--data", str(private), "--json"], env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["profile"] == "laptop-cpu"     # detected on this machine
        r = agent(["run", "--once", "--ignore-conditions", "--json"], env)
        assert r.returncode == 0, r.stderr
        it = json.loads(r.stdout)
        assert it["round"]["step"] == "queued" and it["round"]["n_drafts"] == 2 and it["round"]["n_items"] == 8
        assert it["delivery"]["pending"] == 0
        (report,) = server.reports(round_id)
        assert {s["draft_id"] for s in report["scores"]} == {d["id"] for d in drafts}
        d = it["dataset"]
        assert d["step"] == "trained", d
        # 8 held out: 3 of them are the label-balanced demonstrations of the 3-shot evaluation, 5 are evaluated
        assert d["before"]["n_items"] == d["after"]["n_items"] == 5
        assert d["details"]["n_records"] == 16 and d["details"]["sft"]["status"] == "done"
        assert d["details"]["decision"]["compared_with"] == "base"
        assert d["kept"] is d["details"]["decision"]["keep"]
        (m,) = server.admin("GET", "/metrics", status=200)
        assert (m["before"], m["after"], m["kept"]) == (d["before"], d["after"], d["kept"])
        (version,) = (tmp_path / "agent" / "adapter-store" / "versions").iterdir()
        assert (version / "adapter.gguf").stat().st_size > 0 and (version / "manifest.json").is_file()
        st = json.loads(agent(["status", "--json"], env).stdout)
        sent = next(m for m in st["last_sent"] if m["kind"] == "report")
        assert {s["draft_id"]: s["n_correct"] for s in sent["body"]["scores"]} == \
            {s["draft_id"]: s["n_correct"] for s in report["scores"]}
        assert str(private) not in json.dumps(sent) and st["data_path"] == str(private)
    finally:
        server.stop()
