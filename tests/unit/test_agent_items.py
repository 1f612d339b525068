"""Device-side IRT item selection: learnt from a full round, used in later rounds, private."""

import json
import os
import stat
from pathlib import Path

import numpy as np

from arte.scoring import DraftScore, ScoreResult
from arte.tasks import Example
from edge_agent.items import irt_status, items_for_round, learn_from_round

ITEMS = [Example(f"i{k}", f"q{k}", ("a",), ("a", "b")) for k in range(30)]


def _result(n_drafts: int = 12, complete: bool = True, seed: int = 0) -> ScoreResult:
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1, n_drafts)
    a = np.r_[np.full(10, 3.0), np.full(20, 0.05)]          # items 0-9 discriminate, the rest are noise
    b = rng.normal(0, 0.5, 30)
    y = (rng.random((n_drafts, 30)) < 1 / (1 + np.exp(-a * (theta[:, None] - b)))).astype(np.int8)
    return ScoreResult([DraftScore(f"d{i}", 30, int(y[i].sum())) for i in range(n_drafts)],
                       [e.id for e in ITEMS], y, "loglik", complete)


def test_learns_the_discriminative_items_and_uses_them(tmp_path: Path) -> None:
    assert items_for_round(tmp_path, ITEMS, 25) == ITEMS[:25]
    rec = learn_from_round(tmp_path, _result(40), [f"q{i // 4}" for i in range(40)], keep=10, min_drafts=8)
    assert rec is not None and len(rec["selected"]) == 10
    assert len(set(rec["selected"]) & {f"i{k}" for k in range(10)}) >= 7
    chosen = items_for_round(tmp_path, ITEMS, 30)
    assert [e.id for e in chosen] == rec["selected"]
    assert stat.S_IMODE(os.stat(tmp_path / "irt.json").st_mode) == 0o600
    st = irt_status(tmp_path)
    assert st["kept_items"] == 10 and st["of_items"] == 30 and "selected" not in st
    # Learnt once: a later round does not refit.
    assert learn_from_round(tmp_path, _result(40, seed=1), ["g"] * 40, keep=10, min_drafts=8) is None


def test_nothing_learnt_when_off_partial_or_too_few_drafts(tmp_path: Path) -> None:
    assert learn_from_round(tmp_path, _result(), ["g"] * 12, keep=0, min_drafts=8) is None
    assert learn_from_round(tmp_path, _result(complete=False), ["g"] * 12, keep=10, min_drafts=8) is None
    assert learn_from_round(tmp_path, _result(4), ["g"] * 4, keep=10, min_drafts=8) is None
    assert not (tmp_path / "irt.json").exists() and irt_status(tmp_path) is None


def test_a_stale_selection_falls_back_to_all_items(tmp_path: Path) -> None:
    (tmp_path / "irt.json").write_text(json.dumps({"selected": ["i1", "gone"], "n_items": 30}))
    assert items_for_round(tmp_path, ITEMS, 30) == ITEMS[:30]
    (tmp_path / "irt.json").write_text("{broken")
    assert items_for_round(tmp_path, ITEMS, 5) == ITEMS[:5]


def test_learnt_selection_is_label_balanced(tmp_path: Path) -> None:
    # a label-copying student: most drafts answer "a"; a draft is right on the items labelled with its answer
    items = [Example(f"j{k}", f"q{k}", ("a" if k < 15 else "b",), ("a", "b")) for k in range(30)]
    rng = np.random.default_rng(0)
    answers = np.array(["a"] * 9 + ["b"] * 3)
    labels = np.array([e.answer for e in items])
    y = ((answers[:, None] == labels[None, :]) ^ (rng.random((12, 30)) < 0.1)).astype(np.int8)
    result = ScoreResult([DraftScore(f"d{i}", 30, int(y[i].sum())) for i in range(12)],
                         [e.id for e in items], y, "generate", True)
    rec = learn_from_round(tmp_path, result, [f"q{i // 3}" for i in range(12)], keep=10, min_drafts=8,
                           labels={e.id: e.answer for e in items})
    assert rec is not None and rec["labels"] == {"a": 5, "b": 5} and rec["labels_of_all"] == {"a": 15, "b": 15}
    assert irt_status(tmp_path)["kept_labels"] == {"a": 5, "b": 5}
    chosen = items_for_round(tmp_path, items, 30)
    assert sorted(e.answer for e in chosen) == ["a"] * 5 + ["b"] * 5
