"""The self-test through the fleet: simulated devices POST planted scores to the real app (in process),
the server's aggregate feeds the pairs; with and without local DP; k devices or no signal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from arte.elicit import ElicitConfig
from arte.pairs import PairConfig, select_pairs
from arte.planted import PlantedRule
from arte.selftest import SelftestConfig, alignment_selftest
from benchmarks.alignment_fleet import FleetServer, fleet_scorer, policy
from tests.support.teacher_fakes import PARITY_TASK, fake_align, parity_teacher, planted_drafts

CONFIG = SelftestConfig(rules=("short",), max_words=20, n_heldout=16, sample_seeds=4, n_boot=500,
                        elicit=ElicitConfig(n_questions=40, styles=("plain", "expert", "rules"),
                                            rationale_temperature=1.0, constrain=False))


@pytest.fixture
def server(tmp_path: Path) -> Any:
    s = FleetServer(tmp_path / "server")
    yield s
    s.close()


@pytest.mark.parametrize("mechanism, epsilon", [("none", float("inf")), ("gaussian", 16.0)])
def test_fleet_planted_moves_up_reversed_down(server: FleetServer, tmp_path: Path, mechanism: str,
                                              epsilon: float) -> None:
    log: list[dict[str, Any]] = []
    scorer = fleet_scorer(server, n_devices=10, items_per_device=10, pol=policy(mechanism, epsilon), log=log)
    res = alignment_selftest(PARITY_TASK, CONFIG, tmp_path / "run", open_teacher=parity_teacher, align_pairs=fake_align,
                             scorer=scorer)
    by = {v.rule.name: v for v in res.variants}
    assert by["short"].lift["low"] > 0 and by["short-reversed"].lift["estimate"] < 0
    assert by["short"].pairs["chosen_holds"] == 1.0 and by["short-reversed"].pairs["chosen_holds"] == 0.0
    # every round: 10 devices reported over HTTP, the cohort may align, every draft is eligible
    assert [r["rule"] for r in log] == ["short", "short-reversed", "short-null"]
    assert all(r["n_devices"] == 10 and r["may_align"] and r["eligible"] == res.drafts["kept"] for r in log)
    assert all(r["mechanism"] == mechanism for r in log)
    reports = server.call("GET", f"/rounds/{log[0]['round_id']}/reports", status=200)
    assert len(reports) == 10


def test_strong_local_dp_costs_pairs(server: FleetServer) -> None:
    """Gaussian noise at eps = 1 per report (the 80 scores share it) drowns 10 devices' 10 items each: the
    server's aggregate keeps the noise in the variance, so far fewer pairs pass than without noise."""
    ds = planted_drafts(40)
    rule = PlantedRule("short", max_words=10)
    counts = {}
    for eps in (1.0, float("inf")):
        scorer = fleet_scorer(server, n_devices=10, items_per_device=10, pol=policy("gaussian", eps))
        est = scorer(ds, rule, np.random.default_rng(0))
        counts[eps] = len(select_pairs(PARITY_TASK, ds, est, PARITY_TASK.examples[:3], PairConfig(kinds=("rationale",))).pairs)
    assert counts[float("inf")] >= 30 and counts[1.0] <= counts[float("inf")] // 4


def test_fewer_devices_than_k_give_no_signal(server: FleetServer, tmp_path: Path) -> None:
    scorer = fleet_scorer(server, n_devices=2, items_per_device=10, pol=policy("none", float("inf")), k=3)
    cfg = SelftestConfig(rules=("short",), max_words=20, n_heldout=4, sample_seeds=1, n_boot=200,
                         elicit=ElicitConfig(n_questions=5, rationale_temperature=1.0, constrain=False))
    res = alignment_selftest(PARITY_TASK, cfg, tmp_path / "run", open_teacher=parity_teacher, align_pairs=fake_align,
                             scorer=scorer)
    assert all(v.outcome == "no_signal" for v in res.variants)


def test_fleet_signal_counts_pairs_by_direction(server: FleetServer) -> None:
    from benchmarks.alignment_fleet import fleet_signal

    rows = fleet_signal(server, PARITY_TASK, planted_drafts(40), PARITY_TASK.examples[:3], PlantedRule("short", max_words=10),
                        devices=[10], epsilons=[float("inf"), 1.0], mechanism="gaussian", items_per_device=10,
                        pair_config=PairConfig(kinds=("rationale",)))
    exact, noisy = rows
    assert exact["epsilon"] is None and exact["mechanism"] == "none" and noisy["mechanism"] == "gaussian"
    assert exact["right_way"] >= 30 and exact["wrong_way"] == 0 and exact["pairs"] == exact["right_way"]
    assert noisy["pairs"] < exact["pairs"] and exact["may_align"] and exact["eligible_drafts"] == 80
