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

CONFIG = {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2}
HIDDEN, KV, R = 16, 8, 2


ATTN = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN), "self_attn.v_proj": (KV, HIDDEN),
        "self_attn.o_proj": (HIDDEN, HIDDEN)}


def make_adapter(tmp: Path, shapes: dict[str, tuple[int, int]] = ATTN,
                 **cfg_over) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    sd = {}
    for layer in range(2):
        for mod, (out, inp) in shapes.items():
            pre = f"base_model.model.model.layers.{layer}.{mod}"
            sd[f"{pre}.lora_A.weight"] = rng.standard_normal((R, inp)).astype(np.float32)
            sd[f"{pre}.lora_B.weight"] = rng.standard_normal((out, R)).astype(np.float32)
    cfg = {"peft_type": "LORA", "r": R, "lora_alpha": 4, "bias": "none", "use_dora": False,
           "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
           "target_modules": [m.split(".")[-1] for m in shapes]}
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


def test_unknown_architectures_and_foreign_tensors_are_refused(tmp_path: Path) -> None:
    adir, sd = make_adapter(tmp_path / "a")
    for model_type, why in (("mamba", "supports llama, qwen2"), ("gemma3", "multimodal")):
        with pytest.raises(ConfigError, match=why) as e:
            export_gguf_lora(adir, tmp_path / "x.gguf", {**CONFIG, "model_type": model_type})
        assert e.value.field == "model_type"
    sd["base_model.model.lm_head.lora_A.weight"] = np.zeros((R, HIDDEN), np.float32)
    safetensors_numpy.save_file(sd, str(adir / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match="target_modules"):
        export_gguf_lora(adir, tmp_path / "x.gguf", CONFIG)
    sd.pop("base_model.model.lm_head.lora_A.weight")
    sd["base_model.model.model.layers.0.input_layernorm.lora_A.weight"] = np.zeros((R, HIDDEN), np.float32)
    safetensors_numpy.save_file(sd, str(adir / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match="attention and MLP projections"):
        export_gguf_lora(adir, tmp_path / "x.gguf", CONFIG)
    with pytest.raises(ModelError, match="not a PEFT adapter"):
        export_gguf_lora(tmp_path / "missing", tmp_path / "x.gguf", CONFIG)


@pytest.mark.parametrize("model_type, arch", [("qwen2", "qwen2"), ("qwen3", "qwen3"), ("gemma2", "gemma2"),
                                              ("gemma3_text", "gemma3")])
def test_neox_rope_families_are_written_unpermuted_under_their_architecture(tmp_path: Path, model_type: str,
                                                                            arch: str) -> None:
    shapes = {**ATTN, "mlp.gate_proj": (32, HIDDEN), "mlp.up_proj": (32, HIDDEN), "mlp.down_proj": (HIDDEN, 32)}
    adir, sd = make_adapter(tmp_path / "a", shapes)
    info = export_gguf_lora(adir, tmp_path / "a.gguf", {**CONFIG, "model_type": model_type})
    kv, tensors = read(tmp_path / "a.gguf")
    assert kv["general.architecture"] == arch and info.n_tensors == 28
    pre = "base_model.model.model.layers.1"
    assert np.array_equal(tensors["blk.1.attn_q.weight.lora_b"], sd[f"{pre}.self_attn.q_proj.lora_B.weight"])
    assert np.array_equal(tensors["blk.1.attn_k.weight.lora_b"], sd[f"{pre}.self_attn.k_proj.lora_B.weight"])
    assert np.array_equal(tensors["blk.1.ffn_gate.weight.lora_a"], sd[f"{pre}.mlp.gate_proj.lora_A.weight"])
    assert np.array_equal(tensors["blk.0.ffn_down.weight.lora_b"],
                          sd["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"])


def test_phi3_fused_projections_map_one_to_one(tmp_path: Path) -> None:
    """Phi-3 keeps qkv and gate+up fused in its GGUF too (attn_qkv; ffn_up twice as wide): nothing is split,
    and a permutation, which would have to act per part, is refused."""
    phi = {**CONFIG, "model_type": "phi3", "num_key_value_heads": 4}
    shapes = {"self_attn.qkv_proj": (3 * HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
              "mlp.gate_up_proj": (64, HIDDEN), "mlp.down_proj": (HIDDEN, 32)}
    adir, sd = make_adapter(tmp_path / "a", shapes)
    export_gguf_lora(adir, tmp_path / "a.gguf", phi)
    kv, tensors = read(tmp_path / "a.gguf")
    assert kv["general.architecture"] == "phi3"
    assert sorted({n.split(".")[2] for n in tensors}) == ["attn_output", "attn_qkv", "ffn_down", "ffn_up"]
    pre = "base_model.model.model.layers.0"
    assert np.array_equal(tensors["blk.0.attn_qkv.weight.lora_b"], sd[f"{pre}.self_attn.qkv_proj.lora_B.weight"])
    assert np.array_equal(tensors["blk.0.ffn_up.weight.lora_b"], sd[f"{pre}.mlp.gate_up_proj.lora_B.weight"])
    with pytest.raises(ConfigError, match="fused"):
        export_gguf_lora(adir, tmp_path / "p.gguf", phi, permute=True)


def test_lora_targets_follow_the_family() -> None:
    from arte.families import lora_modules

    llama_names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert lora_modules({"model_type": "phi3"}, llama_names) == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert lora_modules({"model_type": "phi3"}, ["v_proj"]) == ["qkv_proj"]
    assert lora_modules({"model_type": "qwen2"}, llama_names) == llama_names
    assert lora_modules({"model_type": "mistral"}, ["q_proj"]) == ["q_proj"]   # trains; only export refuses


def test_cli_exports_any_adapter_against_an_hf_or_gguf_base(tmp_path: Path) -> None:
    """`arte export gguf-lora ADAPTER_DIR --base MODEL`: the base's family from its config.json or its GGUF
    header; a base the export cannot serve exits 3 naming the field."""
    from click.testing import CliRunner

    from arte_cli.cli import main as arte

    adir, sd = make_adapter(tmp_path / "a")
    hf = tmp_path / "qwen-student"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({**CONFIG, "model_type": "qwen2"}))
    r = CliRunner().invoke(arte, ["export", "gguf-lora", str(adir), "--base", str(hf), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["model_type"] == "qwen2" and out["n_tensors"] == 16 and Path(out["path"]) == adir / "adapter.gguf"
    kv, tensors = read(adir / "adapter.gguf")
    assert kv["general.architecture"] == "qwen2"
    assert np.array_equal(tensors["blk.0.attn_q.weight.lora_b"],
                          sd["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"])   # unpermuted

    w = gguf.GGUFWriter(str(tmp_path / "base.gguf"), arch="llama")
    for add, v in ((w.add_block_count, 2), (w.add_head_count, 4), (w.add_head_count_kv, 2)):
        add(v)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = CliRunner().invoke(arte, ["export", "gguf-lora", str(adir), "--base", str(tmp_path / "base.gguf"),
                                  "--out", str(tmp_path / "l.gguf"), "--dtype", "f16"])
    assert r.exit_code == 0, r.output
    _, tensors = read(tmp_path / "l.gguf")
    assert np.array_equal(tensors["blk.1.attn_k.weight.lora_b"],
                          permute_rows(sd["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"], 2)
                          .astype(np.float16))

    (hf / "config.json").write_text(json.dumps({**CONFIG, "model_type": "mamba"}))
    r = CliRunner().invoke(arte, ["export", "gguf-lora", str(adir), "--base", str(hf)])
    assert r.exit_code == 3 and "model_type" in r.output
    r = CliRunner().invoke(arte, ["export", "gguf-lora", str(tmp_path), "--base", str(hf)])
    assert r.exit_code == 4 and "not a PEFT adapter" in r.output
