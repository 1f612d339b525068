"""DPO at scale, checked on a CPU with real TRL on a tiny random llama (tests/support/tiny_hf.py): the TRL config is
built before the model and the model loads in the training dtype (bf16 here too, under CPU autocast);
an interrupted run resumes from its last checkpoint with the global step going on; ``pairs.jsonl`` is
TRL's own format (``datasets`` loads it, ``DPOTrainer`` tokenizes it); the CUDA-only options say so on a
CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arte.dpo import AlignConfig
from arte.errors import ConfigError
from arte.models import ModelRef
from arte.pairs import PreferencePair, write_pairs
from tests.support.tiny_hf import build_tiny_hf

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelRef:
    import torch

    torch.set_num_threads(1)
    return ModelRef("hf", build_tiny_hf(tmp_path_factory.mktemp("tiny")), "tiny")


def _pairs(n: int = 8) -> list[PreferencePair]:
    return [PreferencePair(id=f"p{i}", kind="rationale",
                           prompt=({"role": "system", "content": "Think step by step."},
                                   {"role": "user", "content": f"Statement: player {i} caught the pass"}),
                           chosen=f"A receiver catches passes. <ans>plausible</ans> {i}",
                           rejected=f"I cannot tell. <ans>implausible</ans> {i}", margin=0.5,
                           chosen_ids=(f"c{i}",), rejected_ids=(f"r{i}",), task="sports") for i in range(n)]


_FAST = dict(learning_rate=1e-2, batch_size=2, max_length=96, warmup_ratio=0.0, holdout_share=0.0, eval_pairs=0,
             device="cpu", lora_r=4, lora_alpha=8)


def test_the_config_comes_first_and_the_model_loads_in_the_training_dtype(tiny: ModelRef, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import arte.backends.hf as hf
    from arte import dpo

    events: list[tuple] = []
    real_args, real_load = dpo.dpo_args, hf.load_hf

    def args_spy(config, output_dir):
        events.append(("config",))
        return real_args(config, output_dir)

    def load_spy(ref, **kw):
        model, tok = real_load(ref, **kw)
        events.append(("load", kw["dtype"], next(model.parameters()).dtype, kw["device"]))
        return model, tok

    monkeypatch.setattr(dpo, "dpo_args", args_spy)
    monkeypatch.setattr(dpo, "load_hf", load_spy)
    res = dpo.align(tiny, _pairs(4), AlignConfig(max_steps=1, precision="bf16", **_FAST), tmp_path / "bf16")
    assert events == [("config",), ("load", torch.bfloat16, torch.bfloat16, "cpu")]
    meta = res.metadata
    assert meta["bf16"] is True and meta["load_dtype"] == "bfloat16" and meta["steps"] == 1
    assert json.loads((tmp_path / "bf16" / dpo.METADATA_FILE).read_text())["load_dtype"] == "bfloat16"

    events.clear()   # auto on a CPU: fp32 training, fp32 weights
    res = dpo.align(tiny, _pairs(4), AlignConfig(max_steps=1, **_FAST), tmp_path / "fp32")
    assert events == [("config",), ("load", torch.float32, torch.float32, "cpu")]
    assert res.metadata["bf16"] is False and res.metadata["load_dtype"] == "float32"


class _Stop(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny: ModelRef, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from arte.dpo import align

    cfg = AlignConfig(max_steps=4, save_steps=2, **_FAST)
    ckpt = tmp_path / "ckpt"

    def stop_at_3(stage: str, step: int, total: int) -> None:
        if step == 3:
            raise _Stop()

    with pytest.raises(_Stop):
        align(tiny, _pairs(), cfg, tmp_path / "a", stop_at_3, checkpoint_dir=ckpt, resume=True)
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-2"]      # step 3 was not saved

    steps: list[int] = []
    res = align(tiny, _pairs(), cfg, tmp_path / "a", lambda s, d, n: steps.append(d), checkpoint_dir=ckpt,
                resume=True)
    assert steps == [3, 4]                                  # the global step went on from the checkpoint
    meta = res.metadata
    assert meta["resumed_from_step"] == 2 and meta["steps"] == 4
    assert [x["step"] for x in meta["losses"]] == [1, 2, 3, 4]             # the curve of both attempts
    assert not ckpt.exists()                                # checkpoints go once the adapter is written

    # the same adapter as a run that was never interrupted (optimizer, schedule, RNG and data order restored)
    whole = align(tiny, _pairs(), cfg, tmp_path / "b", checkpoint_dir=tmp_path / "ckpt-b")
    assert whole.metadata["resumed_from_step"] is None
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(t.abs().max() > 0 for k, t in a.items() if "lora_B" in k)
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k
    assert [x["loss"] for x in meta["losses"]] == pytest.approx([x["loss"] for x in whole.metadata["losses"]],
                                                                abs=1e-5)


def test_pairs_jsonl_is_what_trl_loads(tiny: ModelRef, tmp_path: Path) -> None:
    """``datasets.load_dataset("json")`` on our file, unchanged, then TRL's DPOTrainer tokenizes it."""
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from arte.backends.hf import load_hf

    path = tmp_path / "pairs.jsonl"
    write_pairs(path, _pairs(3))
    ds = load_dataset("json", data_files=str(path), split="train")
    assert ds[0]["chosen"] == [{"role": "assistant", "content": _pairs(1)[0].chosen}]
    model, tok = load_hf(tiny)
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_length=96, report_to="none",
                     gradient_checkpointing=False, save_strategy="no")
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM"))
    row = trainer.train_dataset[0]
    assert len(trainer.train_dataset) == 3 and row["prompt_ids"] and row["rejected_ids"]
    assert tok.decode(row["chosen_ids"]).startswith(_pairs(1)[0].chosen)
    assert row["chosen_from"] == ["c0"] and row["kind"] == "rationale"     # our fields ride along untouched


@pytest.mark.parametrize("option", ["load_in_4bit", "use_liger_kernel"])
def test_cuda_only_options_are_refused_on_a_cpu(tiny: ModelRef, tmp_path: Path, option: str) -> None:
    from arte.dpo import align

    with pytest.raises(ConfigError) as e:
        align(tiny, _pairs(2), AlignConfig(**{option: True}, **_FAST), tmp_path / "x")
    assert e.value.field == option and "CUDA" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_scale_options_reach_trl() -> None:
    from arte.dpo import dpo_args

    args = dpo_args(AlignConfig(device="cpu", gradient_checkpointing=True, precompute_ref_log_probs=True,
                                save_steps=25), "/tmp/arte-dpo-args")
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.precompute_ref_log_probs and args.save_strategy == "steps" and args.save_steps == 25
    assert args.save_total_limit == 2
    with pytest.raises(ConfigError) as e:
        AlignConfig(save_steps=-1)
    assert e.value.field == "save_steps"
