"""Mixed precision for SFT: the "auto" decision from CPU flags, and what ``bf16_matmuls`` does to a model
(bf16 weights and matmuls, fp32 around them, so a small LoRA update survives the forward pass)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from arte.errors import ConfigError
from arte.precision import host_cpu_flags, parse_cpu_flags, resolve_precision

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
"""
SAPPHIRE_RAPIDS_FLAGS = "flags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"
AVX2 = "model name\t: AMD EPYC 7R13\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n"
NEOVERSE_V1 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_flags_are_parsed_from_x86_and_arm_cpuinfo() -> None:
    assert {"avx512_bf16", "avx2", "fpu"} <= parse_cpu_flags(ZEN4)
    assert "sysret_ss_attrs" not in parse_cpu_flags(ZEN4)   # a "bugs" line is not a flags line
    assert parse_cpu_flags(NEOVERSE_V1) == {"fp", "asimd", "evtstrm", "aes", "sve", "bf16", "i8mm"}
    assert parse_cpu_flags("") == frozenset()


@pytest.mark.parametrize("cpuinfo, expected", [
    (ZEN4, "bf16"), (SAPPHIRE_RAPIDS_FLAGS, "bf16"), (AVX2, "fp32"),
    (NEOVERSE_V1, "fp32"),   # ARM bf16 is not measured: auto stays fp32
    ("", "fp32"),
])
def test_auto_picks_bf16_only_with_native_bf16(cpuinfo: str, expected: str) -> None:
    assert resolve_precision("auto", parse_cpu_flags(cpuinfo)) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_precision_is_kept_whatever_the_cpu(precision: str) -> None:
    for cpuinfo in (ZEN4, AVX2):
        assert resolve_precision(precision, parse_cpu_flags(cpuinfo)) == precision


@pytest.mark.parametrize("bad", ["half", "BF16", "", "float32"])
def test_an_unknown_precision_names_the_field(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_precision(bad, ())
    assert e.value.field == "precision" and repr(bad) in str(e.value)


def test_fp16_is_for_cuda_only() -> None:
    assert resolve_precision("fp16", (), device="cuda") == "fp16"
    with pytest.raises(ConfigError, match="cuda") as e:
        resolve_precision("fp16", ())
    assert e.value.field == "precision"
    with pytest.raises(ConfigError) as e:
        resolve_precision("auto", (), device="tpu")
    assert e.value.field == "device"


def test_host_flags_come_from_the_given_cpuinfo_file(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text(AVX2)
    assert host_cpu_flags(f) == parse_cpu_flags(AVX2)
    assert resolve_precision("auto", host_cpu_flags(f)) == "fp32"


def test_without_cpuinfo_the_host_flags_come_from_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    flags = host_cpu_flags(tmp_path / "missing")
    assert flags == ({"avx512_bf16"} if torch.cpu._is_avx512_bf16_supported() else set())


# -- bf16_matmuls on a tiny llama ---------------------------------------------------------------------------


def _lora(model, rank: int = 4):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "o_proj"],
                                            task_type="CAUSAL_LM"))


def test_bf16_matmuls_holds_frozen_weights_in_bf16_and_restores_fp32() -> None:
    torch = pytest.importorskip("torch")
    from arte.precision import bf16_matmuls
    from tests.support.sft_fakes import tiny_llama

    model = _lora(tiny_llama())
    base = model.get_base_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.tensor([[5, 9, 11, 40, 41, 42]])
    with torch.no_grad():
        ref = model(input_ids=x).logits
    with bf16_matmuls(model):
        q = base.model.layers[0].self_attn.q_proj
        assert q.base_layer.weight.dtype == torch.bfloat16 and q.lora_A["default"].weight.dtype == torch.float32
        assert base.lm_head.weight is base.model.embed_tokens.weight   # still tied, one bf16 tensor
        assert base.model.norm.weight.dtype == torch.float32
        with torch.no_grad():
            out = model(input_ids=x).logits
        assert out.dtype == torch.float32
        assert torch.allclose(out, ref, atol=0.05 * float(ref.abs().max()))
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, before[n].bfloat16().float() if not p.requires_grad and p.dim() == 2 else before[n]), n
    assert base.lm_head.weight is base.model.embed_tokens.weight


def test_a_small_lora_update_survives_bf16_matmuls_but_not_autocast() -> None:
    """Why the casts sit where they do (see arte.precision): early in training an adapter's update is far
    below a bf16 rounding step of the projection's output. Here it is added in fp32 and kept; under
    autocast the sum is rounded to bf16, and the update mostly vanishes."""
    torch = pytest.importorskip("torch")
    from arte.precision import bf16_matmuls
    from tests.support.sft_fakes import tiny_llama

    model = _lora(tiny_llama())
    x = torch.tensor([[5, 9, 11, 40, 41, 42, 43, 44]])
    seen: list[torch.Tensor] = []
    model.get_base_model().model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda m, args, out: seen.append(out.detach().float()))

    def update(ctx) -> torch.Tensor:
        """What a tiny random lora_B changes in layer 0's query projection."""
        seen.clear()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.zero_()
            with ctx():
                model(input_ids=x)
            g = torch.Generator().manual_seed(0)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 1e-4)
            with ctx():
                model(input_ids=x)
        return seen[1] - seen[0]

    exact = update(contextlib.nullcontext)
    ours = update(lambda: bf16_matmuls(model))
    autocast = update(lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    cos = torch.nn.functional.cosine_similarity
    assert 0 < float(exact.abs().max()) < 1e-3
    assert float(cos(ours.flatten(), exact.flatten(), dim=0)) > 0.99
    assert float(cos(autocast.flatten(), exact.flatten(), dim=0)) < 0.5
