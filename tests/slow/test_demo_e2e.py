"""`arte demo` end to end, reduced: a real arte-server and worker, real `edge-agent` processes, the embedded
model as teacher and student; every stage of the round runs and the report shows it, whether the scores
give preference pairs or "no signal"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_reduced_demo_runs_the_whole_round(tmp_path: Path, default_model, bigbench_dir: Path) -> None:
    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "arte_cli.cli", "demo", "--task", str(bigbench_dir / "sports_understanding.json"),
           "--work-dir", str(work), "--devices", "2", "--examples-per-device", "12", "--questions", "4",
           "--styles", "plain,expert", "--tailored", "10", "--dpo-epochs", "1", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    doc = json.loads(r.stdout)
    names = {"demo-device-1", "demo-device-2"}
    assert doc["round"]["n_drafts"] >= 1   # how many drafts parse is the teacher's (and the CPU's) doing
    assert {s["device"] for s in doc["scoring"] if s["step"] == "queued"} == names
    assert doc["aggregate"]["n_devices"] == 2 and doc["aggregate"]["may_align"]
    # Either outcome of the round is well formed: pairs and DPO, or "no signal" with its numbers (which one
    # depends on the 135M student's answers, i.e. on the CPU's floating point).
    al = doc["align"]
    sel = al["pair_selection"]
    assert al["outcome"] == sel["outcome"] and al["outcome"] in ("pairs", "no_signal")
    assert al["n_pairs"] == sel["n_pairs"] == sum(sel["counts"].values())
    assert sel["signal"]["drafts"] == sum(sel["signal"]["answers"].values()) >= 1
    assert sel["signal"]["items"]["min"] >= 1 and sel["criterion"]["comparison"] in ("paired", "intervals")
    if al["outcome"] == "pairs":
        assert al["n_pairs"] >= 1 and al["steps"] >= 1 and al["adapter"]
        assert al["reward_margin"]["after"] is not None
    else:
        assert al["n_pairs"] == 0 and al["adapter"] is None and "no signal" in al["reason"]
        assert sel["signal"]["scores"] is not None and any(sel["skipped"].values())
    assert doc["dataset"]["n_examples"] >= 1
    assert {t["device"] for t in doc["training"] if t["step"] == "trained"} == names
    assert {m["device"] for m in doc["metrics"]} == names
    for m in doc["metrics"]:
        # 6 held out per device: 3 are the 3-shot demonstrations (never trained on), 3 are evaluated
        assert m["before"]["n_items"] == m["after"]["n_items"] == 3
    page = (work / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and doc["dataset"]["dataset_id"] in page
    # the private shards stayed on the devices: no validation/holdout input is in any file the server wrote
    private = [x["input"] for i in (1, 2)
               for x in json.loads((work / f"device-{i}" / "private" / "task.json").read_text())["examples"]]
    server_bytes = b"".join(f.read_bytes() for f in (work / "server").rglob("*") if f.is_file())
    assert len(server_bytes) > 10_000
    assert not [p for p in private if p.encode() in server_bytes]
