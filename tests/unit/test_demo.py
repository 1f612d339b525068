"""`arte demo` pieces that need no model: private shards, option validation, the summary and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from arte.errors import ConfigError
from arte.tasks import load_task
from arte_cli.demo import DemoConfig, make_shards, privacy_policy, run_demo
from arte_cli.demo_report import render_summary, write_report

SPORTS = Path(__file__).resolve().parents[1] / "data" / "bigbench" / "sports_understanding.json"


@pytest.fixture
def task_path() -> Path:
    return SPORTS


def test_shards_are_private_disjoint_and_keep_the_task_text(tmp_path: Path, task_path: Path) -> None:
    task, seeds, paths = make_shards(task_path, tmp_path, devices=3, per_device=10, n_seeds=4, seed=7)
    assert len(seeds) == 4 and all(set(s) == {"input", "choices", "answer"} for s in seeds)
    shards = [load_task(p) for p in paths]
    ids = [x.id for t in shards for x in t.examples]
    assert [len(t.examples) for t in shards] == [10, 10, 10] and len(set(ids)) == 30
    seed_inputs = {s["input"] for s in seeds}
    assert not seed_inputs & {x.input for t in shards for x in t.examples}
    originals = {x.id: x for x in task.examples}
    for t in shards:
        assert t.description == task.description and t.kind == "multiple_choice"
        for x in t.examples:   # the same items, labels included
            assert (x.input, x.targets, set(x.choices)) == (originals[x.id].input, originals[x.id].targets,
                                                            set(originals[x.id].choices))
    again = make_shards(task_path, tmp_path / "again", devices=3, per_device=10, n_seeds=4, seed=7)[2]
    assert [p.read_text() for p in again] == [p.read_text() for p in paths]


def test_too_small_a_task_is_refused_by_name(tmp_path: Path) -> None:
    p = tmp_path / "tiny.jsonl"
    p.write_text("".join(json.dumps({"input": f"q{i}", "target": "a"}) + "\n" for i in range(10)))
    with pytest.raises(ConfigError, match="examples_per_device.*need 23 examples.*has 10"):
        make_shards(p, tmp_path / "out", devices=3, per_device=6, n_seeds=5, seed=0)


def test_privacy_specs() -> None:
    assert privacy_policy("none") == {"mechanism": "none"}
    assert privacy_policy("gaussian:2") == {"mechanism": "gaussian", "epsilon": 2.0, "delta": 1e-5}
    assert privacy_policy("laplace:0.5") == {"mechanism": "laplace", "epsilon": 0.5}
    for bad in ("gaussian", "gauss:1", "laplace:-1", "laplace:x"):
        with pytest.raises(ConfigError, match="privacy"):
            privacy_policy(bad)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="styles.*nonsense"):
        DemoConfig(task=tmp_path / "t.json", work_dir=tmp_path, styles=("plain", "nonsense"))
    with pytest.raises(ConfigError, match="devices"):
        DemoConfig(task=tmp_path / "t.json", work_dir=tmp_path, devices=0)
    with pytest.raises(ConfigError, match="tailored"):
        DemoConfig(task=tmp_path / "t.json", work_dir=tmp_path, tailored=1)


def test_an_earlier_demo_is_not_overwritten(tmp_path: Path, task_path: Path) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "arte.db").write_text("precious")
    with pytest.raises(ConfigError, match="work_dir.*earlier demo"):
        run_demo(DemoConfig(task=task_path, work_dir=tmp_path))
    assert (tmp_path / "server" / "arte.db").read_text() == "precious"


def _doc() -> dict:
    acc = lambda z, t: {"zero_shot": z, "three_shot": t, "n_items": 12}  # noqa: E731
    return {"task": "sports_understanding", "mode": "loglik", "devices": [{"name": "demo-device-1"}] * 2,
            "round": {"round_id": "rnd_1", "n_drafts": 4},
            "aggregate": {"n_devices": 2, "drafts": {f"d{i}": {"score": s} for i, s in enumerate((0.2, 0.5, 0.5, 0.9))}},
            "align": {"n_pairs": 3, "steps": 2, "reward_margin": {"on": "held_out", "pairs": 1, "before": 0.0,
                                                                  "after": 0.12, "accuracy_before": 0.0,
                                                                  "accuracy_after": 1.0},
                      "losses": [{"step": 1, "loss": 0.69, "margin": 0.01}, {"step": 2, "loss": 0.6, "margin": 0.1}]},
            "dataset": {"dataset_id": "ds_1", "n_examples": 8},
            "metrics": [{"device": "demo-device-1", "before": acc(0.5, 0.5), "after": acc(0.75, 0.5), "kept": True},
                        {"device": "demo-device-2", "before": acc(0.5, 0.6), "after": acc(0.4, 0.6), "kept": False}],
            "training": [{"device": "demo-device-3", "step": "failed", "error": "out of memory"}],
            "seconds": {"setup": 3.0, "total": 100.0}}


def test_summary_and_report(tmp_path: Path) -> None:
    doc = _doc()
    text = render_summary(doc)
    assert "mean 0.525, min 0.200, max 0.900" in text
    assert "reward margin on the 1 held-out pairs 0.0 -> 0.12, accuracy 0.0 -> 1.0" in text
    assert re.search(r"demo-device-1\s+0\.500\s+0\.750\s+0\.500\s+0\.500\s+yes", text)
    assert re.search(r"demo-device-2\s+0\.500\s+0\.400\s+0\.600\s+0\.600\s+no", text)
    assert "demo-device-3: failed out of memory" in text and "total 100 s" in text
    page = write_report(doc, tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "ds_1" in page
    assert "<script" not in page.split("<h2>Run record")[0]


def test_the_default_task_ships_with_the_package() -> None:
    from arte_cli.demo import _default_task

    task = load_task(_default_task())
    assert task.name == "sports_understanding" and task.kind == "multiple_choice" and len(task.examples) == 1000


def test_fresh_deletes_only_an_earlier_demo(tmp_path: Path) -> None:
    from arte_cli.demo import clean_work_dir

    demo = tmp_path / "demo"
    for d in ("server", "logs", "device-1/state"):
        (demo / d).mkdir(parents=True)
    (demo / "report.html").write_text("old")
    clean_work_dir(demo)
    assert not demo.exists()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="work_dir.*notes.txt"):
        clean_work_dir(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_round_without_signal_is_reported_not_failed(tmp_path: Path) -> None:
    doc = _doc()
    doc["align"] = {"outcome": "no_signal", "n_pairs": 0, "adapter": None,
                    "reason": "no signal: no preference pair passes (confidence 0.9; rationale comparisons: none): 4 of 4 drafts scored, "
                              "2 questions, 12 items each; scores 0.583-0.583 (1 distinct)",
                    "pair_selection": {"outcome": "no_signal", "skipped": {"rationale": {"tie": 2}}}}
    text = render_summary(doc)
    assert "DPO: not run, no signal: no preference pair passes" in text and "0.583-0.583" in text
    assert "unaligned teacher" in text and "ds_1" in text and "demo-device-1" in text
    page = write_report(doc, tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "no signal" in page


def test_devices_share_the_cores() -> None:
    """The demo's devices run at the same time: together they use the machine's cores, never more (llama.cpp
    threads beyond the cores spin-wait on each other), each at least one; --threads overrides."""
    from arte_cli.demo import agent_threads

    assert agent_threads(3, cpus=2) == 1 and agent_threads(2, cpus=2) == 1 and agent_threads(1, cpus=2) == 2
    assert agent_threads(3, cpus=16) == 5 and agent_threads(3, threads=4, cpus=2) == 4


class _CampaignFleet:
    """The admin API as run_campaign sees it: a campaign that moves one step per poll."""

    STEPS = (("elicit", None), ("collect", "rnd_a"), ("tailor", "rnd_a"), ("collect", "rnd_b"), ("collect", "rnd_b"),
             ("align", "rnd_b"))

    def __init__(self, end: str = "completed") -> None:
        self.polls, self.end, self.created = 0, end, None

    def check_alive(self, during: str) -> None:
        pass

    def api(self, method: str, path: str, json: dict | None = None) -> dict:
        if method == "POST":
            self.created = json
        else:
            self.polls += 1
        i = min(self.polls, len(self.STEPS))
        state = "active" if i < len(self.STEPS) else self.end
        step, rid = self.STEPS[i - 1] if i else ("elicit", None)
        row = {"round_no": 1, "n_reports": 2, "align": "pairs", "n_pairs": 3, "reward_accuracy_before": 0.5,
               "reward_accuracy_after": 1.0, "dataset_examples": 8, "n_kept": 1, "n_metrics": 2,
               "before_zero_shot": 0.5, "after_zero_shot": 0.625, "adapter_id": "adp_x", "parent_adapter_id": None}
        return {"campaign_id": "cmp_1", "state": state, "step": step, "round_id": rid, "round_no": 1 + (rid == "rnd_b"),
                "reason": "2 jobs failed in a row" if state == "paused" else None, "history": [row],
                "events": [{"version": k + 1, "message": f"m{k}"} for k in range(i)]}


def test_campaign_mode_lets_devices_iterate_once_per_collecting_round() -> None:
    from arte_cli.demo_campaign import CampaignDemoError, campaign_lines, run_campaign

    fleet, calls, logged = _CampaignFleet(), [], []
    camp = run_campaign(fleet, "coh_1", 2, {"close_devices": 2}, [], lambda step, part: calls.append(step) or [],
                        logged.append, timeout_s=60, wait=lambda s: None)
    assert fleet.created == {"cohort_id": "coh_1", "rounds": 2, "policy": {"close_devices": 2}}
    assert calls == ["round1", "round2", "train-last"]        # once per round, then the last dataset
    assert logged[-1].endswith("m5") and len(logged) == 6      # every transition logged once
    assert camp["state"] == "completed" and camp["scoring"] == [[], []]
    text = "\n".join(campaign_lines(camp))
    assert "50.0%->100.0%" in text and "1/2" in text and "adp_x <- base" in text
    with pytest.raises(CampaignDemoError, match="paused: 2 jobs failed"):
        run_campaign(_CampaignFleet("paused"), "coh_1", 2, {}, [], lambda s, p: [], logged.append, timeout_s=60,
                     wait=lambda s: None)
    with pytest.raises(ConfigError, match="rounds"):
        DemoConfig(task=Path("t.json"), work_dir=Path("."), rounds=0)
