"""Student model families: how a transformers architecture maps onto llama.cpp's GGUF layout.

Contract: :func:`family` returns the :class:`Family` of a transformers config (object or dict), or raises
:class:`ConfigError` on ``model_type`` listing the supported ones. A family says

* ``gguf_arch``: llama.cpp's architecture name, ``general.architecture`` of the base GGUF and of every
  adapter written for it (llama.cpp refuses an adapter of another architecture);
* ``permute_qk``: whether llama.cpp's converter (``convert_hf_to_gguf.py``, shipped in the
  llama-cpp-python source distribution) permutes the rows of the q and k projections. Only its
  ``LlamaModel`` does (``undo_permute``: llama.cpp applies RoPE to interleaved pairs, transformers'
  llama to two halves per head); Qwen2/3, Gemma 2/3 and Phi-3 run llama.cpp's NEOX RoPE on the
  transformers layout as it is, so their weights (and LoRA factors) are written unpermuted;
* ``fused``: projections the family holds in one module. Phi-3 keeps q, k and v in ``qkv_proj`` and the
  gate and up projections in ``gate_up_proj``, in transformers and in its GGUF alike (``attn_qkv``;
  ``ffn_up`` twice as wide, the gate half first), so a LoRA on the fused module is written 1:1 and
  nothing has to be split. Asking for any of q/k/v (gate/up) on Phi-3 adapts the whole fused module.

GGUF tensor names come from the ``gguf`` package's own map (:func:`gguf_tensor`), the same
``TensorNameMap`` the converter uses, so adapter names always match the base's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from arte.errors import ConfigError
from arte.gguf_meta import read_gguf_metadata

__all__ = ["Family", "FAMILIES", "LORA_TENSORS", "family", "model_config_dict", "lora_modules", "gguf_tensor",
           "gguf_model_config"]


@dataclass(frozen=True)
class Family:
    """One transformers ``model_type`` as llama.cpp stores it (see the module docstring)."""

    model_type: str
    gguf_arch: str
    permute_qk: bool
    fused: Mapping[str, str] = field(default_factory=dict)


_PHI3_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
               "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "llama", True),
    Family("qwen2", "qwen2", False),
    Family("qwen3", "qwen3", False),
    Family("gemma2", "gemma2", False),
    Family("gemma3_text", "gemma3", False),
    Family("phi3", "phi3", False, _PHI3_FUSED),
)}
_REFUSED = {
    "gemma3": "a multimodal Gemma 3 (Gemma3ForConditionalGeneration); train the text model "
              "(Gemma3ForCausalLM, model_type gemma3_text) as the student",
}
# The GGUF tensors a LoRA may adapt (llama.cpp applies adapters to these matmuls).
LORA_TENSORS = ("ATTN_Q", "ATTN_K", "ATTN_V", "ATTN_QKV", "ATTN_OUT", "FFN_GATE", "FFN_UP", "FFN_DOWN")


def model_config_dict(model_config: Any) -> dict[str, Any]:
    """A transformers config (object) or its dict, as a dict."""
    return dict(model_config) if isinstance(model_config, Mapping) else model_config.to_dict()


def family(model_config: Any) -> Family:
    """The family of ``model_config``; ``ConfigError`` on ``model_type`` if llama.cpp export is not
    supported for it."""
    mtype = model_config_dict(model_config).get("model_type")
    if mtype in _REFUSED:
        raise ConfigError("model_type", f"GGUF LoRA export does not support {_REFUSED[mtype]}")
    if mtype not in FAMILIES:
        raise ConfigError("model_type", f"GGUF LoRA export supports {', '.join(FAMILIES)} models, got {mtype!r}")
    return FAMILIES[mtype]


def lora_modules(model_config: Any, targets: Sequence[str]) -> list[str]:
    """The module names PEFT should target for llama-style ``targets`` (``q_proj`` …) on this model:
    fused modules where the family fuses them (Phi-3), in order, without repeats. Families without a
    GGUF mapping keep ``targets`` as they are (they train; only the export refuses them)."""
    fused = FAMILIES[mtype].fused if (mtype := model_config_dict(model_config).get("model_type")) in FAMILIES else {}
    out: list[str] = []
    for t in targets:
        name = fused.get(t, t)
        if name not in out:
            out.append(name)
    return out


def gguf_tensor(fam: Family, module: str, n_layers: int) -> tuple[str, str]:
    """(GGUF tensor kind, GGUF weight name) of the transformers module ``module``
    (``model.layers.0.self_attn.q_proj`` → ``ATTN_Q``, ``blk.0.attn_q.weight``), from the ``gguf``
    package's tensor name map for the family's architecture. ``ConfigError`` on ``target_modules`` if
    llama.cpp has no such tensor or cannot apply a LoRA to it."""
    # heavy: gguf is an optional runtime (the training extra)
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == fam.gguf_arch)
    found = gguf.get_tensor_name_map(arch, n_layers).get_type_and_name(module)
    if found is None or found[0] not in gguf.MODEL_TENSORS[arch]:
        raise ConfigError("target_modules", f"{module!r} is not a tensor of llama.cpp's {fam.gguf_arch} "
                                            "architecture; cannot export a LoRA on it")
    kind = found[0].name
    if kind not in LORA_TENSORS:
        raise ConfigError("target_modules", f"{module!r} is llama.cpp's {found[1]} ({kind}); GGUF LoRA export "
                                            f"covers the attention and MLP projections only")
    return kind, found[1] + ".weight"


def gguf_model_config(path: Any) -> dict[str, Any]:
    """The parts of a transformers config the adapter export needs (``model_type``, head and layer counts),
    read from a base GGUF's metadata: what ``arte export gguf-lora --base model.gguf`` uses."""
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    by_arch = [f for f in FAMILIES.values() if f.gguf_arch == arch]
    if not by_arch:
        raise ConfigError("model_type", f"{path} is a {arch!r} model; GGUF LoRA export supports the "
                                        f"architectures {', '.join(sorted({f.gguf_arch for f in FAMILIES.values()}))}")
    try:
        n_head, n_layers = int(meta[f"{arch}.attention.head_count"]), int(meta[f"{arch}.block_count"])
    except KeyError as e:
        raise ConfigError("base", f"{path} has no {e.args[0]} in its GGUF metadata") from None
    return {"model_type": by_arch[0].model_type, "num_attention_heads": n_head, "num_hidden_layers": n_layers,
            "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv") or n_head)}
