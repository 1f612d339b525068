"""DPO without a model: which pairs are held out, the learning-rate schedule, and that ``align`` trains on the
training pairs only and judges itself on the held-out ones (TRL's trainer replaced by a recording fake)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from arte.dpo import AlignConfig, lr_factor, split_pairs, warmup_steps
from arte.errors import ConfigError
from arte.pairs import PreferencePair


def _pairs(n: int) -> list[PreferencePair]:
    return [PreferencePair(id=f"p{i}", kind="rationale" if i % 3 else "question",
                           prompt=({"role": "user", "content": f"question {i}"},), chosen=f"good {i}",
                           rejected=f"bad {i}", margin=0.5, chosen_ids=(f"c{i}",), rejected_ids=(f"r{i}",))
            for i in range(n)]


def test_split_pairs_is_deterministic_disjoint_and_order_free() -> None:
    pairs = _pairs(20)
    train, held = split_pairs(pairs, 0.2, seed=0)
    assert len(held) == 4 and len(train) == 16
    assert {p.id for p in train} | {p.id for p in held} == {p.id for p in pairs}
    assert not {p.id for p in train} & {p.id for p in held}
    assert [p.id for p in train] == [p.id for p in pairs if p not in held]     # input order kept
    again = split_pairs(list(reversed(pairs)), 0.2, seed=0)
    assert {p.id for p in again[1]} == {p.id for p in held}
    assert {p.id for p in split_pairs(pairs, 0.2, seed=1)[1]} != {p.id for p in held}


@pytest.mark.parametrize("n, share, held", [(0, 0.2, 0), (1, 0.2, 0), (2, 0.2, 1), (3, 0.2, 1), (10, 0.25, 2),
                                            (4, 0.9, 3), (50, 0.0, 0)])
def test_split_pairs_sizes(n: int, share: float, held: int) -> None:
    train, h = split_pairs(_pairs(n), share, seed=0)
    assert len(h) == held and len(train) == n - held


def test_the_schedule_never_runs_a_step_at_learning_rate_zero() -> None:
    assert [warmup_steps(0.1, n) for n in (1, 2, 4, 9, 10, 25)] == [0, 0, 0, 0, 1, 2]
    for total in range(1, 40):
        w = warmup_steps(0.1, total)
        f = [lr_factor(s, w, total) for s in range(total)]
        assert all(0 < x <= 1 for x in f), (total, f)
        assert max(f) == 1.0 and f.index(1.0) == w                         # the peak right after the warm-up
        assert all(a < b for a, b in zip(f[:w], f[1:w + 1]))               # rising warm-up
        assert all(a >= b for a, b in zip(f[w:], f[w + 1:]))               # then decaying
    assert lr_factor(0, 0, 2) == 1.0 and lr_factor(1, 0, 2) == pytest.approx(0.5)
    assert lr_factor(0, 2, 20) == pytest.approx(1 / 3) and lr_factor(19, 2, 20) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 17 / 18)))


def test_config_validation() -> None:
    for kw, field in [({"holdout_share": 1.0}, "holdout_share"), ({"holdout_share": -0.1}, "holdout_share"),
                      ({"eval_pairs": -1}, "eval_pairs"), ({"warmup_ratio": 1.0}, "warmup_ratio")]:
        with pytest.raises(ConfigError) as e:
            AlignConfig(**kw)
        assert e.value.field == field
    assert AlignConfig().holdout_share == 0.2


class _RecordingTrainer:
    """Stands in for TRL's ``DPOTrainer``: records what it is given to train on and to evaluate, and
    reports a margin that is positive only after training."""

    seen: dict[str, Any] = {}

    def __init__(self, *, model: Any, args: Any, train_dataset: Any, processing_class: Any, peft_config: Any,
                 callbacks: Any) -> None:
        self.args = SimpleNamespace(device="cpu", bf16=False, world_size=1)
        self.train_dataset = train_dataset
        self.trained = False
        self.state = SimpleNamespace(global_step=0, max_steps=0, log_history=[])
        self.accelerator = SimpleNamespace(is_main_process=True)
        self.lr_scheduler = None
        _RecordingTrainer.seen = {"train": [r["prompt"][0]["content"] for r in train_dataset], "evaluated": []}

    def remove_callback(self, cb: Any) -> None:
        pass

    def evaluate(self, eval_dataset: Any) -> dict[str, float]:
        prompts = [r["prompt"][0]["content"] for r in eval_dataset]
        self.seen["evaluated"].append((self.trained, prompts))
        m = 0.3 if self.trained else 0.0
        return {"eval_rewards/margins": m, "eval_rewards/accuracies": 1.0 if self.trained else 0.0,
                "eval_loss": math.log(2) - m}

    def train(self) -> Any:
        self.trained = True
        self.state.global_step = self.state.max_steps = 2
        self.state.log_history = [{"step": 1, "loss": 0.69, "learning_rate": 5e-5},
                                  {"step": 2, "loss": 0.6, "learning_rate": 2.5e-5}]
        return SimpleNamespace(training_loss=0.645)

    def save_model(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/tmp/x"}))


def test_align_never_trains_on_the_held_out_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trl")
    import trl

    from arte import dpo
    from arte.models import ModelRef

    monkeypatch.setattr(trl, "DPOTrainer", _RecordingTrainer)
    monkeypatch.setattr("arte.dpo.load_hf",
                        lambda ref, **kw: (SimpleNamespace(train=lambda: None), object()))
    monkeypatch.setattr(dpo, "lora_config", lambda config: None)
    pairs = _pairs(10)
    cfg = AlignConfig(holdout_share=0.3, eval_pairs=4, seed=7, device="cpu")
    res = dpo.align(ModelRef(name="m", kind="hf", path=tmp_path), pairs, cfg, tmp_path / "adapter")

    train, held = split_pairs(pairs, 0.3, seed=7)
    held_prompts = {p.prompt[0]["content"] for p in held}
    seen = _RecordingTrainer.seen
    assert len(held) == 3 and not held_prompts & set(seen["train"])
    assert sorted(seen["train"]) == sorted(p.prompt[0]["content"] for p in train)
    # evaluated before and after: the held-out pairs, and (labelled train) the first eval_pairs training pairs
    assert [(t, sorted(p)) for t, p in seen["evaluated"]] == [
        (False, sorted(held_prompts)), (False, sorted(p.prompt[0]["content"] for p in train[:4])),
        (True, sorted(held_prompts)), (True, sorted(p.prompt[0]["content"] for p in train[:4]))]
    meta = json.loads((tmp_path / "adapter" / dpo.METADATA_FILE).read_text())
    assert meta["pairs"]["held_out"] == 3 and meta["pairs"]["trained"] == 7 and meta["pairs"]["total"] == 10
    assert sorted(meta["pairs"]["held_out_ids"]) == sorted(p.id for p in held)
    assert meta["reward"]["held_out"] == {"pairs": 3, "before": {"margin": 0.0, "accuracy": 0.0, "loss": math.log(2)},
                                          "after": {"margin": 0.3, "accuracy": 1.0, "loss": math.log(2) - 0.3}}
    assert meta["reward"]["train"]["pairs"] == 4
    assert meta["reward_margin"] == {"on": "held_out", "pairs": 3, "before": 0.0, "after": 0.3,
                                     "accuracy_before": 0.0, "accuracy_after": 1.0}
    assert res.margin_on == "held_out" and res.margin_after == 0.3
    assert [x["lr"] for x in meta["losses"]] == [5e-5, 2.5e-5]
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "m"

    # nothing to hold out from one pair: the headline falls back to the training pairs, and says so
    dpo.align(ModelRef(name="m", kind="hf", path=tmp_path), pairs[:1], cfg, tmp_path / "one")
    meta = json.loads((tmp_path / "one" / dpo.METADATA_FILE).read_text())
    assert meta["pairs"]["held_out"] == 0 and meta["reward"]["held_out"] == {"pairs": 0, "before": None,
                                                                             "after": None}
    assert meta["reward_margin"]["on"] == "train" and meta["reward_margin"]["pairs"] == 1
