"""The LoRA training loop on a tiny random llama: it learns, accumulation equals one batch, a stopped or
killed run resumes to the same adapter, budgets are honoured, configs are validated."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from arte.errors import ConfigError  # noqa: E402
from arte.sft import SFTConfig, plan_memory, train_lora  # noqa: E402
from arte.sft_data import Example, pack  # noqa: E402
from tests.support.sft_fakes import tiny_llama  # noqa: E402


def rows(n: int = 8, length: int = 24):
    g = torch.Generator().manual_seed(3)
    exs = [Example(str(i), tuple(torch.randint(3, 250, (10,), generator=g).tolist()), 4) for i in range(n)]
    return pack(exs, length, pad_id=0)


def cfg(**kw) -> SFTConfig:
    base = dict(rank=4, alpha=8, lr=5e-2, batch_size=2, max_length=24, save_every=2, warmup_ratio=0.0,
                max_steps=6, seed=0, precision="fp32")   # exact comparisons; bf16 has its own tests
    base.update(kw)
    return SFTConfig(**base)


def adapter(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def same(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


def test_training_lowers_the_loss_and_changes_only_the_adapter(tmp_path: Path) -> None:
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # a learnable pattern: every example continues its prompt with the same completion
    data = pack([Example(str(i), (3 + i, 4 + i, 5 + i, 6 + i) + tuple(range(40, 46)), 4) for i in range(8)], 24, 0)
    peft_model, res = train_lora(model, data, cfg(max_steps=12), tmp_path)
    assert res.status == "done" and res.steps == 12 and len(res.losses) == 12
    assert res.losses[-1] < 0.5 * res.losses[0]
    lora = adapter(peft_model)
    assert lora and any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)
    for n, p in peft_model.get_base_model().named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, before[n.replace("base_layer.", "")])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert res.tokens == 12 * 2 * 20   # 2 rows of two 10-token examples per step


def test_gradient_accumulation_gives_the_same_update_as_one_batch(tmp_path: Path) -> None:
    a, _ = train_lora(tiny_llama(), rows(), cfg(batch_size=4, grad_accumulation=1, max_steps=2), tmp_path / "a")
    b, res = train_lora(tiny_llama(), rows(), cfg(batch_size=4, grad_accumulation=4, max_steps=2), tmp_path / "b")
    assert res.plan.micro_batch == 1 and res.plan.grad_accumulation == 4
    assert same(adapter(a), adapter(b), atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path: Path, precision: str) -> None:
    full, _ = train_lora(tiny_llama(), rows(), cfg(precision=precision), tmp_path / "full")
    calls = iter(range(100))
    part, res = train_lora(tiny_llama(), rows(), cfg(precision=precision), tmp_path / "run",
                           should_stop=lambda: next(calls) >= 3)
    assert res.status == "stopped" and res.steps == 3
    again, res2 = train_lora(tiny_llama(), rows(), cfg(precision=precision), tmp_path / "run")
    assert res2.resumed_from == 3 and res2.steps == 6 and res2.status == "done"
    assert same(adapter(full), adapter(again))


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    full, _ = train_lora(tiny_llama(), rows(), cfg(), tmp_path / "full")

    def crash(step: int, total: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny_llama(), rows(), cfg(), tmp_path / "run", progress=crash)
    again, res = train_lora(tiny_llama(), rows(), cfg(), tmp_path / "run")
    assert res.resumed_from == 4   # checkpoints every 2 steps; step 5 was lost
    assert same(adapter(full), adapter(again))


def test_checkpoints_of_another_run_are_refused(tmp_path: Path) -> None:
    train_lora(tiny_llama(), rows(), cfg(max_steps=2), tmp_path)
    with pytest.raises(ConfigError, match="output_dir"):
        train_lora(tiny_llama(), rows(), cfg(max_steps=2, lr=1e-3), tmp_path)


def test_time_budget_stops_between_steps(tmp_path: Path) -> None:
    ticks = iter(range(0, 1000, 10))   # every clock reading advances 10 s
    _, res = train_lora(tiny_llama(), rows(), cfg(time_budget_s=25), tmp_path, clock=lambda: next(ticks))
    assert res.status == "time_budget" and 0 < res.steps < 6
    assert (tmp_path / "checkpoints" / f"step-{res.steps:06d}").is_dir()


def test_memory_plan_picks_the_largest_micro_batch_that_fits() -> None:
    mc = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)
    c = SFTConfig(batch_size=4, max_length=256)
    assert plan_memory(c, mc, 900).micro_batch == 4   # no budget: one micro-batch
    p = plan_memory(SFTConfig(batch_size=4, max_length=256, memory_budget_mb=1536), mc, 900)
    assert (p.micro_batch, p.grad_accumulation, p.gradient_checkpointing) == (1, 4, False)
    assert p.estimated_peak_mb <= 1536
    p = plan_memory(SFTConfig(batch_size=4, max_length=256, memory_budget_mb=1100), mc, 900)
    assert p.gradient_checkpointing and p.micro_batch >= 1
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        plan_memory(SFTConfig(batch_size=4, max_length=256, memory_budget_mb=950), mc, 900)


@pytest.mark.parametrize("kw, field", [
    ({"rank": 0}, "rank"), ({"targets": ("lm_head",)}, "targets"), ({"targets": ()}, "targets"),
    ({"batch_size": 4, "grad_accumulation": 3}, "grad_accumulation"), ({"dropout": 1.0}, "dropout"),
    ({"max_steps": 0}, "max_steps"), ({"memory_budget_mb": -1}, "memory_budget_mb"), ({"lr": True}, "lr"),
    ({"precision": "fp16"}, "precision"),
])
def test_config_errors_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        SFTConfig(**kw)
    assert e.value.field == field


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gradient_checkpointing_gives_the_same_adapter(tmp_path: Path, precision: str) -> None:
    a, _ = train_lora(tiny_llama(), rows(), cfg(max_steps=2, gradient_checkpointing=False, precision=precision),
                      tmp_path / "a")
    b, res = train_lora(tiny_llama(), rows(), cfg(max_steps=2, gradient_checkpointing=True, precision=precision),
                        tmp_path / "b")
    assert res.plan.gradient_checkpointing
    assert same(adapter(a), adapter(b), atol=1e-5)


def test_memory_plan_uses_the_longest_real_row() -> None:
    mc = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)
    c = SFTConfig(batch_size=4, max_length=256, memory_budget_mb=1536)
    assert plan_memory(c, mc, 900).micro_batch == 1
    assert plan_memory(c, mc, 900, row_tokens=120).micro_batch == 2   # short rows: two fit


def test_bf16_training_tracks_fp32_and_saves_the_same_adapter_format(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    data = pack([Example(str(i), (3 + i, 4 + i, 5 + i, 6 + i) + tuple(range(40, 46)), 4) for i in range(8)], 24, 0)
    original = {n: p.detach().clone() for n, p in tiny_llama().named_parameters()}
    _, ra = train_lora(tiny_llama(), data, cfg(max_steps=12), tmp_path / "fp32")
    b, rb = train_lora(tiny_llama(), data, cfg(max_steps=12, precision="bf16"), tmp_path / "bf16")
    assert (ra.precision, rb.precision) == ("fp32", "bf16")
    assert rb.losses[-1] < 0.5 * rb.losses[0]
    # bf16 rounds each matmul's inputs (relative error 2^-9): the curves part by 0.05 at most here (0.7% of
    # the first loss, on logits made large by the 0.3 init); 2% leaves room for other BLAS kernels
    assert max(abs(x - y) for x, y in zip(ra.losses, rb.losses)) < 0.02 * ra.losses[0]
    fa = load_file(str(tmp_path / "fp32" / "adapter" / "adapter_model.safetensors"))
    fb = load_file(str(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors"))
    assert fa.keys() == fb.keys() and all(fb[k].dtype == fa[k].dtype == torch.float32 for k in fa)
    assert (tmp_path / "bf16" / "adapter" / "adapter_config.json").read_text() == \
        (tmp_path / "fp32" / "adapter" / "adapter_config.json").read_text()
    # the returned model is fp32 again, on the bf16-rounded base
    for n, p in b.get_base_model().named_parameters():
        assert p.dtype == torch.float32
        if "lora_" not in n:
            o = original[n.replace("base_layer.", "")]
            assert torch.equal(p, o.bfloat16().float() if p.dim() == 2 else o), n


def test_memory_plan_allows_for_bf16_overhead_beyond_its_smaller_base() -> None:
    mc = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)
    c = SFTConfig(batch_size=4, max_length=256, memory_budget_mb=1536)
    fp32, bf16 = plan_memory(c, mc, 700), plan_memory(c, mc, 700, precision="bf16")
    assert bf16.estimated_peak_mb == pytest.approx(fp32.estimated_peak_mb + 200)
    c = SFTConfig(batch_size=4, max_length=256, memory_budget_mb=1600)
    assert plan_memory(c, mc, 700, row_tokens=120).micro_batch == 4
    assert plan_memory(c, mc, 700, row_tokens=120, precision="bf16").micro_batch == 2
