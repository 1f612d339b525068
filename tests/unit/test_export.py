"""GGUF LoRA export: keys and tensor layout as llama.cpp expects, the q/k row permutation, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from arte.errors import ConfigError, ModelError
from arte.export import export_gguf_lora, permute_rows

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

CONFIG = {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2}
HIDDEN, KV, R = 16, 8, 2


def make_adapter(tmp: Path, **cfg_over) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    shapes = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (KV, HIDDEN), "v_proj": (KV, HIDDEN), "o_proj": (HIDDEN, HIDDEN)}
    sd = {}
    for layer in range(2):
        for mod, (out, inp) in shapes.items():
            pre = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            sd[f"{pre}.lora_A.weight"] = rng.standard_normal((R, inp)).astype(np.float32)
            sd[f"{pre}.lora_B.weight"] = rng.standard_normal((out, R)).astype(np.float32)
    cfg = {"peft_type": "LORA", "r": R, "lora_alpha": 4, "bias": "none", "use_dora": False,
           "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, "target_modules": list(shapes)}
    cfg.update(cfg_over)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "adapter_config.json").write_text(json.dumps(cfg))
    safetensors_numpy.save_file(sd, str(tmp / "adapter_model.safetensors"))
    return tmp, sd


def read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    r = gguf.GGUFReader(str(path))
    kv = {}
    for name, f in r.fields.items():
        if name.startswith(("general.", "adapter.")):
            v = f.parts[f.data[0]]
            kv[name] = bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v[0].item()
    # GGUFReader gives tensors in numpy order (reversed ggml ne), i.e. PEFT's own shapes
    return kv, {t.name: np.array(t.data) for t in r.tensors}


def test_permute_rows_matches_llama_cpp_layout() -> None:
    # per head, transformers keeps the rotary halves [x0 x1 | y0 y1]; llama.cpp wants pairs [x0 y0 x1 y1]
    w = np.arange(8)[:, None].astype(np.float32)   # one head of 8 rows
    assert permute_rows(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    w2 = np.arange(16)[:, None].astype(np.float32)   # two heads: each permuted on its own
    assert permute_rows(w2, 2)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
    with pytest.raises(ConfigError, match="n_head"):
        permute_rows(np.zeros((6, 1)), 2)


def test_export_writes_adapter_keys_names_and_permuted_q_k(tmp_path: Path) -> None:
    adir, sd = make_adapter(tmp_path / "a")
    info = export_gguf_lora(adir, tmp_path / "a.gguf", CONFIG)
    kv, tensors = read(tmp_path / "a.gguf")
    assert kv["general.architecture"] == "llama" and kv["general.type"] == "adapter"
    assert kv["adapter.type"] == "lora" and kv["adapter.lora.alpha"] == pytest.approx(4.0)
    assert info.n_tensors == len(tensors) == 16 and info.rank == R and len(info.sha256) == 64
    pre = "base_model.model.model.layers.1.self_attn"
    assert np.array_equal(tensors["blk.1.attn_q.weight.lora_a"], sd[f"{pre}.q_proj.lora_A.weight"])
    assert np.array_equal(tensors["blk.1.attn_q.weight.lora_b"], permute_rows(sd[f"{pre}.q_proj.lora_B.weight"], 4))
    assert np.array_equal(tensors["blk.1.attn_k.weight.lora_b"], permute_rows(sd[f"{pre}.k_proj.lora_B.weight"], 2))
    assert np.array_equal(tensors["blk.1.attn_v.weight.lora_b"], sd[f"{pre}.v_proj.lora_B.weight"])
    assert np.array_equal(tensors["blk.0.attn_output.weight.lora_b"],
                          sd["base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"])
    assert not (tmp_path / "a.gguf.tmp").exists()


def test_f16_export_and_no_permutation_variant(tmp_path: Path) -> None:
    adir, sd = make_adapter(tmp_path / "a")
    export_gguf_lora(adir, tmp_path / "h.gguf", CONFIG, dtype="f16")
    _, t16 = read(tmp_path / "h.gguf")
    assert t16["blk.0.attn_v.weight.lora_a"].dtype == np.float16
    export_gguf_lora(adir, tmp_path / "np.gguf", CONFIG, permute=False)
    _, raw = read(tmp_path / "np.gguf")
    assert np.array_equal(raw["blk.0.attn_q.weight.lora_b"],
                          sd["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"])


@pytest.mark.parametrize("over, field", [
    ({"use_dora": True}, "use_dora"), ({"use_rslora": True}, "use_rslora"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"), ({"alpha_pattern": {"q_proj": 2}}, "alpha_pattern"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"bias": "lora_only"}, "bias"),
    ({"peft_type": "IA3"}, "peft_type"),
])
def test_unsupported_adapters_are_refused_with_the_setting(tmp_path: Path, over: dict, field: str) -> None:
    adir, _ = make_adapter(tmp_path / "a", **over)
    with pytest.raises(ConfigError) as e:
        export_gguf_lora(adir, tmp_path / "x.gguf", CONFIG)
    assert e.value.field == field
    assert not (tmp_path / "x.gguf").exists()


def test_non_llama_bases_and_foreign_tensors_are_refused(tmp_path: Path) -> None:
    adir, sd = make_adapter(tmp_path / "a")
    with pytest.raises(ConfigError, match="model_type"):
        export_gguf_lora(adir, tmp_path / "x.gguf", {**CONFIG, "model_type": "qwen2"})
    sd["base_model.model.lm_head.lora_A.weight"] = np.zeros((R, HIDDEN), np.float32)
    safetensors_numpy.save_file(sd, str(adir / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match="target_modules"):
        export_gguf_lora(adir, tmp_path / "x.gguf", CONFIG)
    with pytest.raises(ModelError, match="not a PEFT adapter"):
        export_gguf_lora(tmp_path / "missing", tmp_path / "x.gguf", CONFIG)
