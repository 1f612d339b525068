"""Adapter export: PEFT LoRA → GGUF LoRA adapter for llama.cpp, and LoRA merged into the base (for ONNX).

Contract: ``export_gguf_lora(adapter_dir, out_path, model_config)`` reads a PEFT adapter directory
(``adapter_config.json`` + ``adapter_model.safetensors``) and writes the GGUF adapter llama.cpp loads with
``lora_path=`` (``arte.backends.llama.LlamaCppStudent(…, lora_path=…, lora_scale=…)``) on the base that
llama.cpp's own converter made of the same transformers model. Families: llama, qwen2, qwen3, gemma2,
gemma3 (text) and phi3 (:mod:`arte.families`). It refuses, naming the setting, what it cannot write
faithfully: DoRA, rsLoRA, per-module ranks or alphas, bias training, ``modules_to_save``,
``fan_in_fan_out``, modules other than the attention/MLP projections, and other architectures.

The format (llama.cpp ``convert_lora_to_gguf.py`` and ``src/llama-adapter.cpp``; RUNTIME-NOTES §7b):

* KV ``general.architecture`` = the base's (``llama``, ``qwen2`` …), ``general.type = adapter``,
  ``adapter.type = lora``, ``adapter.lora.alpha`` (float32). llama.cpp scales by
  ``lora_scale × alpha / rank`` with the rank read from the tensor shapes, which is PEFT's ``alpha / r``.
* Tensors ``{base weight name}.lora_{a,b}``, the base name from the ``gguf`` package's tensor name map
  (``blk.{i}.attn_q.weight``; Phi-3's fused ``blk.{i}.attn_qkv.weight`` and ``ffn_up``), PEFT's arrays as
  they are: ``lora_A`` (r, in) is ggml ``ne=[in, r]``; ``lora_B`` (out, r) is ``ne=[r, out]``.
* The non-obvious part, llama only: llama.cpp's converter permutes the rows of the q and k projections
  for its RoPE layout (``LlamaModel.permute``, by ``n_head`` for q and ``n_head_kv`` for k), and
  transformers undoes it when it loads a GGUF. A LoRA trained in transformers' layout therefore needs
  the same row permutation of ``lora_B`` for q and k (``lora_A`` acts on the input side and is
  unchanged). Without it llama.cpp applies the update to the wrong rotary dimensions (KL 0.53 instead
  of 0.004 on the default model). The other families are converted unpermuted, and so are their
  adapters (``tests/slow/test_families.py`` shows either choice made wrongly breaks the match).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arte.errors import ConfigError, ModelError
from arte.families import Family, family, gguf_tensor, model_config_dict
from arte.models import sha256_file

__all__ = ["GgufExport", "permute_rows", "export_gguf_lora", "read_adapter_config", "merge_lora"]

# PEFT's key of a LoRA factor: base_model.model.{module path}.lora_{A,B}.weight (no adapter name in files)
_TENSOR = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class GgufExport:
    """What was written."""

    path: str
    sha256: str
    n_tensors: int
    rank: int
    alpha: float
    bytes: int


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: rows from transformers' rotary layout (two halves per head) to
    GGUF's (interleaved pairs)."""
    if w.shape[0] % (2 * n_head):
        raise ConfigError("n_head", f"{w.shape[0]} rows cannot be split into {n_head} heads of even size")
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT LoRA adapter, checked for what the GGUF format can express."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError("peft_type", f"only LoRA adapters can be exported, got {cfg.get('peft_type')!r}")
    refusals = {
        "use_dora": "DoRA adds a magnitude vector that llama.cpp's LoRA adapters do not have",
        "use_rslora": "rsLoRA scales by alpha/sqrt(r); llama.cpp scales by alpha/r",
        "rank_pattern": "per-module ranks are not supported; train with one rank",
        "alpha_pattern": "per-module alphas are not supported; train with one alpha",
        "modules_to_save": "fully trained modules cannot be expressed as a LoRA adapter",
        "fan_in_fan_out": "Conv1D-style (fan_in_fan_out) weights are not llama projections",
    }
    for key, why in refusals.items():
        if cfg.get(key):
            raise ConfigError(key, f"cannot export this adapter to GGUF: {why}")
    if cfg.get("bias", "none") != "none":
        raise ConfigError("bias", "cannot export trained biases to a GGUF LoRA adapter; train with bias='none'")
    return cfg


def _shape(model_config: Any) -> tuple[Family, int, int, int]:
    """(family, n_head, n_head_kv, n_layers) of the base's transformers config."""
    cfg = model_config_dict(model_config)
    fam = family(cfg)
    try:
        n_head = int(cfg["num_attention_heads"])
        n_layers = int(cfg["num_hidden_layers"])
    except KeyError as e:
        raise ConfigError(str(e.args[0]), "missing from the base model's config") from None
    return fam, n_head, int(cfg.get("num_key_value_heads") or n_head), n_layers


def export_gguf_lora(adapter_dir: str | Path, out_path: str | Path, model_config: Any, *,
                     dtype: str = "f32", permute: bool | None = None) -> GgufExport:
    """Write the PEFT adapter in ``adapter_dir`` as a GGUF LoRA adapter at ``out_path``.

    ``model_config`` is the base's transformers config (object or dict): its ``model_type``, head and
    layer counts. ``dtype`` is ``f32`` (exact) or ``f16`` (half the size; KL 0.006 instead of 0.004 on
    the default model). ``permute`` overrides the family's q/k permutation (None: the family's rule;
    forcing the other choice is wrong, for tests that show it matters).
    """
    # heavy: gguf and safetensors belong to the training extra
    import gguf
    from safetensors.numpy import load_file

    if dtype not in ("f32", "f16"):
        raise ConfigError("dtype", f"must be f32 or f16, got {dtype!r}")
    cfg = read_adapter_config(adapter_dir)
    fam, n_head, n_head_kv, n_layers = _shape(model_config)
    do_permute = fam.permute_qk if permute is None else permute
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{adapter_dir} has no adapter_model.safetensors")
    sd = load_file(str(weights))
    rank = int(cfg["r"])
    alpha = float(cfg["lora_alpha"])
    np_dtype = np.float32 if dtype == "f32" else np.float16
    tensors: list[tuple[str, np.ndarray]] = []
    for key in sorted(sd):
        m = _TENSOR.match(key)
        if m is None:
            raise ConfigError("target_modules", f"tensor {key!r} is not a LoRA A/B factor; cannot export it")
        module, ab = m[1], m[2]
        kind, name = gguf_tensor(fam, module, n_layers)
        t = sd[key].astype(np.float32)
        if t.ndim != 2 or t.shape[0 if ab == "A" else 1] != rank:
            raise ModelError(f"{key} has shape {t.shape}, not a rank-{rank} LoRA {ab} matrix")
        if do_permute and ab == "B" and kind == "ATTN_QKV":
            raise ConfigError("target_modules", f"{key}: a fused qkv projection cannot be row-permuted per part")
        if do_permute and ab == "B" and kind == "ATTN_Q":
            t = permute_rows(t, n_head)
        if do_permute and ab == "B" and kind == "ATTN_K":
            t = permute_rows(t, n_head_kv)
        tensors.append((f"{name}.lora_{ab.lower()}", np.ascontiguousarray(t.astype(np_dtype))))
    if not tensors:
        raise ModelError(f"{weights} holds no LoRA tensors")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch=fam.gguf_arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, t in tensors:
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)
    return GgufExport(str(out), sha256_file(out), len(tensors), rank, alpha, out.stat().st_size)


def merge_lora(model: Any, adapter_dir: str | Path, out_dir: str | Path, tokenizer: Any) -> Path:
    """Merge the adapter into ``model`` (a plain transformers model, modified) and save model + tokenizer
    as an HF directory (what the ONNX export reads)."""
    from peft import PeftModel

    read_adapter_config(adapter_dir)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
