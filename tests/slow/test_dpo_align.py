"""DPO + LoRA on the embedded model, tiny settings: the adapter's weights change and the chosen-over-rejected
reward margin on the training pairs rises (by TRL's measure and by an independent log-prob computation); a
short run with the default warm-up ratio and held-out pairs trains from its first step and reports the
reward on pairs it never trained on."""

from __future__ import annotations

import dataclasses
import json

import pytest

from arte.models import DEFAULT_MODEL

pytestmark = pytest.mark.slow


def _pairs():
    from arte.pairs import PreferencePair

    sports = [("Lionel Messi", "scored a free kick"), ("Tom Brady", "threw a touchdown pass"),
              ("Stephen Curry", "hit a three pointer"), ("Shohei Ohtani", "hit a home run"),
              ("Serena Williams", "served an ace"), ("Connor McDavid", "scored a power play goal")]
    return [PreferencePair(
        id=f"p{i}", kind="rationale",
        prompt=({"role": "system", "content": "Answer the question. Think step by step."},
                {"role": "user", "content": f"Statement: {who} {what}\nOptions: plausible, implausible"}),
        chosen=f"{who} plays the sport where players {what.split()[0]} like that. <ans>plausible</ans>",
        rejected="I cannot tell. <ans>implausible</ans>", margin=1.0, chosen_ids=(f"c{i}",),
        rejected_ids=(f"r{i}",), task="sports") for i, (who, what) in enumerate(sports)]


def test_align_changes_the_adapter_and_raises_the_margin(tmp_path, default_model) -> None:
    import torch
    from safetensors.torch import load_file

    from arte.backends.hf_teacher import TorchTeacher
    from arte.dpo import METADATA_FILE, AlignConfig, align
    from arte.home import convert_dir

    torch.set_num_threads(1)   # 2 threads spin-wait on a shared 2-core machine
    pairs = _pairs()
    cfg = AlignConfig(learning_rate=2e-3, max_steps=3, batch_size=2, warmup_ratio=0.0, max_length=128,
                      eval_pairs=len(pairs), holdout_share=0.0, seed=0)
    steps = []
    res = align(default_model, pairs, cfg, tmp_path / "adapter", progress=lambda s, d, n: steps.append((s, d, n)),
                convert_dir=convert_dir())

    # Files: a PEFT adapter with a resolvable base (the hub model the default quantizes), the metadata, no pickles.
    out = tmp_path / "adapter"
    assert (out / "adapter_model.safetensors").is_file() and not (out / "training_args.bin").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == DEFAULT_MODEL.hub_id
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["base_model"]["sha256"] == default_model.sha256 and meta["steps"] == 3
    assert meta["pairs"] == {"total": 6, "trained": 6, "held_out": 0, "question": 0, "rationale": 6,
                             "held_out_ids": []}
    assert len(meta["losses"]) == 3 and meta["train_tokens"] > 0 and meta["config"]["learning_rate"] == 2e-3
    assert steps[-1] == ("train", 3, 3)

    # The weights changed: PEFT initializes every lora_B to zero.
    weights = load_file(str(out / "adapter_model.safetensors"))
    b = [w for k, w in weights.items() if "lora_B" in k]
    assert len(b) == 30 * 4 and all(w.abs().max() > 0 for w in b)

    # The reward margin rose (TRL's evaluation on the training pairs, before and after).
    assert res.margin_before == pytest.approx(0.0, abs=1e-6)
    assert res.margin_after > 0.01
    assert meta["reward_margin"]["accuracy_after"] > 0.5
    assert meta["reward_margin"]["on"] == "train" and meta["reward"]["held_out"]["pairs"] == 0

    # Independently: β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))] with the trained adapter.
    teacher = TorchTeacher.from_ref(default_model, convert_dir=convert_dir(), adapters={"aligned": str(out)})
    convs = [list(p.prompt) for p in pairs]
    pol_c = teacher.completion_logprobs(convs, [p.chosen for p in pairs])
    pol_r = teacher.completion_logprobs(convs, [p.rejected for p in pairs])
    teacher.set_adapter(None)
    ref_c = teacher.completion_logprobs(convs, [p.chosen for p in pairs])
    ref_r = teacher.completion_logprobs(convs, [p.rejected for p in pairs])
    margins = [cfg.beta * ((pc - rc) - (pr - rr)) for pc, rc, pr, rr in zip(pol_c, ref_c, pol_r, ref_r)]
    assert sum(margins) / len(margins) > 0.01


def test_a_short_run_trains_from_its_first_step_and_is_judged_on_held_out_pairs(tmp_path, default_model) -> None:
    import math

    import torch

    from arte.dpo import AlignConfig, align, split_pairs
    from arte.home import convert_dir

    torch.set_num_threads(1)
    pairs = _pairs() + [dataclasses.replace(p, id=f"x{p.id}", chosen=p.chosen.replace("plays", "is known for"))
                        for p in _pairs()[:2]]
    # 8 pairs, 2 held out, 2 steps with the default warm-up ratio (0.1): before, the first step ran at lr 0
    cfg = AlignConfig(learning_rate=2e-3, max_steps=2, batch_size=3, max_length=128, holdout_share=0.25,
                      eval_pairs=2, seed=0)
    res = align(default_model, pairs, cfg, tmp_path / "adapter", convert_dir=convert_dir())
    meta = res.metadata
    _, held = split_pairs(pairs, 0.25, 0)
    assert meta["pairs"]["held_out"] == 2 and meta["pairs"]["trained"] == 6
    assert sorted(meta["pairs"]["held_out_ids"]) == sorted(p.id for p in held)
    assert meta["warmup_steps"] == 0 and len(meta["losses"]) == 2
    assert all(x["lr"] > 0 for x in meta["losses"]) and meta["losses"][0]["lr"] == pytest.approx(2e-3)
    assert meta["losses"][0]["loss"] == pytest.approx(math.log(2), abs=1e-3)     # a fresh adapter
    assert abs(meta["losses"][1]["loss"] - math.log(2)) > 1e-4                  # the first step moved it
    assert abs(meta["train_loss"] - math.log(2)) > 1e-5
    for name, n in (("held_out", 2), ("train", 2)):
        e = meta["reward"][name]
        assert e["pairs"] == n
        assert e["before"]["margin"] == pytest.approx(0.0, abs=1e-6)
        assert 0.0 <= e["after"]["accuracy"] <= 1.0 and math.isfinite(e["after"]["margin"])
    assert meta["reward_margin"]["on"] == "held_out" and res.margin_on == "held_out"
    assert meta["reward_margin"]["after"] == meta["reward"]["held_out"]["after"]["margin"]


def test_config_validation_and_trl_arguments() -> None:
    from arte.dpo import AlignConfig, dpo_args
    from arte.errors import ConfigError

    for kw, field in [({"beta": 0}, "beta"), ({"max_steps": 0}, "max_steps"), ({"device": "tpu"}, "device"),
                      ({"precision": "fp8"}, "precision"), ({"target_modules": ()}, "target_modules"),
                      ({"warmup_ratio": 1.0}, "warmup_ratio"), ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ConfigError) as e:
            AlignConfig(**kw)
        assert e.value.field == field
    assert AlignConfig(target_modules=["q_proj"]).target_modules == ("q_proj",)
    args = dpo_args(AlignConfig(device="cpu", max_steps=5, beta=0.2), "/tmp/arte-dpo-args")
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing
    assert args.lr_scheduler_type == "cosine" and args.max_steps == 5 and args.beta == 0.2
    assert args.save_strategy == "no" and args.report_to == []


@pytest.mark.gpu
def test_align_on_cuda(tmp_path, default_model) -> None:
    import torch

    from arte.dpo import AlignConfig, align
    from arte.home import convert_dir

    pairs = _pairs()
    cfg = AlignConfig(learning_rate=2e-3, max_steps=3, batch_size=2, warmup_ratio=0.0, max_length=128,
                      eval_pairs=len(pairs), holdout_share=0.0, device="cuda")
    res = align(default_model, pairs, cfg, tmp_path / "adapter", convert_dir=convert_dir())
    assert res.metadata["device"].startswith("cuda") and res.metadata["bf16"] == torch.cuda.is_bf16_supported()
    assert res.metadata["load_dtype"] == ("bfloat16" if res.metadata["bf16"] else "float32")   # the training dtype
    assert res.margin_after > res.margin_before


@pytest.mark.gpu
def test_qlora_with_checkpointing_and_a_precomputed_reference_on_cuda(tmp_path, default_model) -> None:
    pytest.importorskip("bitsandbytes")
    from arte.dpo import AlignConfig, align
    from arte.home import convert_dir

    pairs = _pairs()
    cfg = AlignConfig(learning_rate=2e-3, max_steps=3, batch_size=2, warmup_ratio=0.0, max_length=128,
                      eval_pairs=len(pairs), holdout_share=0.0, device="cuda", load_in_4bit=True,
                      gradient_checkpointing=True, precompute_ref_log_probs=True, save_steps=2)
    res = align(default_model, pairs, cfg, tmp_path / "adapter", convert_dir=convert_dir())
    assert res.metadata["load_in_4bit"] and res.metadata["steps"] == 3
    assert res.margin_after > res.margin_before
