"""torch/transformers student, and the one place that loads a model into transformers.

Contract: ``load_hf(ref)`` returns ``(model, tokenizer)`` for a GGUF file (dequantized by transformers,
``gguf_file=``) or an HF directory, with the GGUF tokenizer's special tokens set from the GGUF's own
metadata (transformers 4.57 sets EOS to ``<|im_start|>`` on SmolLM2 and adds a BOS the GGUF says not to
add; see RUNTIME-NOTES §4). A GGUF load takes
~15 s, so with ``convert_dir`` the converted model is saved once and later loads take a fraction of a
second. ``TorchStudent`` implements :class:`arte.student.Student`, reusing the KV cache of the longest
common prefix with the previous prompt and scoring all continuations of a prompt in one batch.

SFT, DPO and the ONNX export use ``load_hf`` too, so every part trains and runs the same weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from arte.errors import BackendError, ConfigError, ModelError
from arte.gguf_meta import read_gguf_metadata
from arte.models import ModelRef
from arte.student import (
    Closes,
    Continuation,
    Generation,
    OnePromptAtATime,
    longest_common_prefix,
)

__all__ = ["load_hf", "converted_path", "model_config", "HFTokenized", "fix_gguf_tokenizer", "gguf_special_tokens",
           "gguf_config_fixes", "GGUF_SPECIAL", "TorchStudent"]

log = logging.getLogger(__name__)


GGUF_SPECIAL = ("bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id", "padding_token_id",
                "add_bos_token", "add_eos_token")


def gguf_special_tokens(path: str | Path) -> dict[str, int | bool]:
    """The special-token metadata of a GGUF (``tokenizer.ggml.{bos,eos,eot,eom,padding}_token_id``,
    ``add_bos_token``, ``add_eos_token``), the keys it has, by their short names."""
    meta = read_gguf_metadata(path, [f"tokenizer.ggml.{k}" for k in GGUF_SPECIAL])
    return {k: (bool(v) if k.startswith("add_") else int(v))
            for k in GGUF_SPECIAL if (v := meta.get(f"tokenizer.ggml.{k}")) is not None}


def gguf_config_fixes(path: str | Path) -> dict[str, Any]:
    """Config values transformers 4.57's GGUF loader leaves at its defaults although the GGUF (or
    llama.cpp's rule) fixes them: ``head_dim`` (``attention.key_length``; Qwen3's loader ignores it) and,
    for Gemma 2/3, the attention scale ``query_pre_attn_scalar`` (llama.cpp: the head size, the width per
    head for the 27B models) and the logit soft-capping. Without them a model of non-default shape would be
    trained in transformers as another model than the one llama.cpp runs."""
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    fixes: dict[str, Any] = {}
    head_dim = meta.get(f"{arch}.attention.key_length")
    if head_dim:
        fixes["head_dim"] = int(head_dim)
    if arch in ("gemma2", "gemma3") and head_dim:
        big = meta.get(f"{arch}.block_count") == {"gemma2": 46, "gemma3": 62}[arch]   # llama.cpp's LLM_TYPE_27B
        per_head = int(meta[f"{arch}.embedding_length"]) // int(meta[f"{arch}.attention.head_count"])
        fixes["query_pre_attn_scalar"] = per_head if big else int(head_dim)
        fixes["final_logit_softcapping"] = meta.get(f"{arch}.final_logit_softcapping")
        if arch == "gemma2":
            fixes["attn_logit_softcapping"] = meta.get(f"{arch}.attn_logit_softcapping")
    return fixes


def fix_gguf_tokenizer(tok: Any, model: Any | None = None, special: dict[str, int | bool] | None = None) -> None:
    """Set the special tokens of a tokenizer transformers built from a GGUF to the GGUF's own metadata
    (``special``: :func:`gguf_special_tokens`). transformers 4.57 gets them wrong (on SmolLM2 it takes
    ``<|im_start|>`` for EOS and adds a BOS the GGUF says not to add). EOS is the GGUF's EOS; the model
    stops generating at every end-of-generation id llama.cpp stops at (EOS, EOT, EOM); padding is the GGUF's
    padding token unless it is missing or the BOS, then EOS; BOS is added only if the GGUF says so."""
    special = special or {}
    n = len(tok)

    def token(key: str) -> str | None:
        i = special.get(key)
        return tok.convert_ids_to_tokens(int(i)) if isinstance(i, int) and 0 <= i < n else None

    tok.eos_token = token("eos_token_id") or tok.eos_token
    if token("bos_token_id"):
        tok.bos_token = token("bos_token_id")
    pad = token("padding_token_id")
    tok.pad_token = pad if pad is not None and pad != tok.bos_token else tok.eos_token
    if hasattr(tok, "add_bos_token"):
        tok.add_bos_token = bool(special.get("add_bos_token", False))
    if model is not None:
        eog = [tok.eos_token_id] + [int(special[k]) for k in ("eot_token_id", "eom_token_id")
                                     if isinstance(special.get(k), int) and special[k] != tok.eos_token_id]
        model.generation_config.eos_token_id = eog[0] if len(eog) == 1 else eog
        model.generation_config.pad_token_id = tok.pad_token_id
        model.config.eos_token_id = tok.eos_token_id
        model.config.pad_token_id = tok.pad_token_id


def converted_path(ref: ModelRef, convert_dir: str | Path) -> Path:
    """Where :func:`load_hf` keeps the HF conversion of the GGUF ``ref`` under ``convert_dir``."""
    return Path(convert_dir) / f"{ref.path.stem}-{(ref.sha256 or 'local')[:12]}"


def model_config(ref: ModelRef, convert_dir: str | Path | None = None) -> dict[str, Any]:
    """The transformers config of ``ref`` as a dict (``config.json``; for a GGUF, its conversion's when
    ``convert_dir`` holds one, which is instant, else read from the GGUF by transformers, ~10 s)."""
    src = ref.path if ref.kind == "hf" else converted_path(ref, convert_dir) if convert_dir else None
    if src is not None and (src / "config.json").is_file():
        return json.loads((src / "config.json").read_text(encoding="utf-8"))
    # heavy: transformers parses the GGUF's metadata
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(ref.path.parent, gguf_file=ref.path.name).to_dict()


def load_hf(ref: ModelRef, *, dtype: Any = None, convert_dir: str | Path | None = None,
            device: str = "cpu", device_map: str | dict[str, Any] | None = None,
            quantization_config: Any = None) -> tuple[Any, Any]:
    """Load ``ref`` into transformers: ``(model, tokenizer)``, model in eval mode on ``device``.

    ``device_map`` (e.g. ``"auto"``: spread over every GPU, then the CPU) and ``quantization_config``
    (e.g. bitsandbytes 4-bit) go to ``from_pretrained``, which then places the weights itself: loaded
    straight onto their devices in ``dtype``, never as a full fp32 copy in host memory (a GGUF is
    converted once into ``convert_dir`` first, which these options need)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    placed = device_map is not None or quantization_config is not None
    if ref.kind == "hf":
        src, kw = ref.path, {}
    elif ref.kind == "gguf":
        if convert_dir is not None:
            cached = converted_path(ref, convert_dir)
            if not ((cached / "config.json").is_file() and (cached / "arte-source.json").is_file()):
                model, tok = load_hf(ref, dtype=torch.float32, convert_dir=None, device="cpu")
                tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                (tmp / "arte-source.json").write_text(json.dumps({"gguf": str(ref.path), "sha256": ref.sha256}))
                try:
                    tmp.rename(cached)
                except OSError:   # another process converted it first
                    shutil.rmtree(tmp, ignore_errors=True)
                if not placed:
                    return (model.to(device=device, dtype=dtype), tok)
                del model
            src, kw = cached, {}
        elif placed:
            raise ConfigError("convert_dir", "device_map / quantization_config need the GGUF converted once "
                                             "into a directory: pass convert_dir")
        else:
            src, kw = ref.path.parent, {"gguf_file": ref.path.name}
    else:
        raise ModelError(f"unknown model kind {ref.kind!r}")
    if device_map is not None:
        kw["device_map"] = device_map
    if quantization_config is not None:
        kw["quantization_config"] = quantization_config
        kw.setdefault("device_map", {"": device})
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
        if "gguf_file" in kw:
            config = AutoConfig.from_pretrained(src, **kw)
            for key, value in gguf_config_fixes(ref.path).items():
                if hasattr(config, key):
                    setattr(config, key, value)
            kw["config"] = config
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw)
    except (OSError, ValueError) as e:
        raise ModelError(f"transformers could not load {ref.path}: {e}") from e
    if ref.kind == "gguf" or "gguf_file" in kw:
        fix_gguf_tokenizer(tok, model, gguf_special_tokens(ref.path))
    elif tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if "device_map" not in kw:
        model.to(device)
    model.eval()
    return model, tok


class HFTokenized:
    """``tokenize``/``detokenize`` through a Hugging Face tokenizer ``self.tok`` (torch and ONNX students)."""

    tok: Any

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
        if bos and getattr(self.tok, "add_bos_token", False) and self.tok.bos_token_id is not None:
            ids = [self.tok.bos_token_id] + ids
        return ids

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tok.decode(list(tokens), skip_special_tokens=True)


class TorchStudent(HFTokenized, OnePromptAtATime, Closes):
    """A transformers causal LM as a student (CPU or CUDA)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "torch", reuse: bool = True,
                 n_ctx: int | None = None) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.tok = tokenizer
        self.name = name
        self.reuse = reuse
        self._n_ctx = n_ctx or int(getattr(model.config, "max_position_embeddings", 2048))
        eog = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eog = eog if isinstance(eog, list) else [eog]
        self._eos = {int(t) for t in [tokenizer.eos_token_id, *eog] if t is not None}
        self._cache: Any = None
        self._cached: list[int] = []
        self._last_logits: Any = None
        self.tokens_evaluated = 0

    @classmethod
    def from_ref(cls, ref: ModelRef, *, convert_dir: str | Path | None = None, device: str = "cpu",
                 dtype: str | None = None, reuse: bool = True) -> "TorchStudent":
        """Load ``ref`` on ``device``; ``dtype`` names a torch dtype (``float16``...; default float32)."""
        import torch

        model, tok = load_hf(ref, convert_dir=convert_dir, device=device,
                             dtype=getattr(torch, dtype) if dtype else None)
        return cls(model, tok, name=ref.name, reuse=reuse)

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def close(self) -> None:
        self._cache = None
        self._cached = []

    def _forward(self, ids: Sequence[int], cache: Any) -> Any:
        torch = self._torch
        x = torch.tensor([list(ids)], device=self.model.device)
        with torch.no_grad():
            out = self.model(input_ids=x, past_key_values=cache, use_cache=True)
        self.tokens_evaluated += len(ids)
        return out

    def _prime(self, prompt: Sequence[int]) -> Any:
        """Make the cache hold ``prompt``; returns the logits after its last token (1-D, float32)."""
        from transformers import DynamicCache

        if not prompt:
            raise BackendError("empty prompt")
        if len(prompt) > self._n_ctx:
            raise BackendError(f"prompt of {len(prompt)} tokens exceeds the context of {self._n_ctx}")
        keep = min(longest_common_prefix(self._cached, prompt), len(prompt) - 1) if self.reuse else 0
        if keep == 0 or self._cache is None:
            self._cache, keep = DynamicCache(), 0
        else:
            self._cache.crop(keep)
        out = self._forward(prompt[keep:], self._cache)
        self._cached = list(prompt)
        return out.logits[0, -1].float()

    def loglik(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[Continuation]:
        torch = self._torch
        if any(len(c) == 0 for c in continuations):
            raise BackendError("empty continuation")
        first = torch.log_softmax(self._prime(prompt), -1)
        multi = [c for c in continuations if len(c) > 1]
        rows: list[Any] = []
        if multi:
            width = max(len(c) - 1 for c in multi)
            pad = self.tok.pad_token_id or 0
            ids = torch.tensor([list(c[:-1]) + [pad] * (width - len(c) + 1) for c in multi],
                               device=self.model.device)
            cache = copy.deepcopy(self._cache)
            cache.batch_repeat_interleave(len(multi))
            with torch.no_grad():   # right padding is harmless: only positions before the pad are read
                out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
            self.tokens_evaluated += int(ids.numel())
            rows = list(torch.log_softmax(out.logits.float(), -1))
        res, k = [], 0
        for c in continuations:
            lp = [first]
            if len(c) > 1:
                lp += [rows[k][i] for i in range(len(c) - 1)]
                k += 1
            tok_lp = [float(d[t]) for d, t in zip(lp, c)]
            greedy = all(int(d.argmax()) == t for d, t in zip(lp, c))
            res.append(Continuation(float(np.sum(tok_lp)), len(c), greedy))
        if not self.reuse:
            self.close()
        return res

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0, top_p: float = 1.0) -> list[Generation]:
        torch = self._torch
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be >= 1, got {max_new_tokens}")
        results = []
        for i, prompt in enumerate(prompts):
            gen = torch.Generator().manual_seed(hash((seed, i)) & 0x7FFFFFFF)
            logits = self._prime(prompt)
            toks: list[int] = []
            result = None
            while result is None:
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, -1)
                    if top_p < 1.0:
                        sp, si = probs.sort(descending=True)
                        cut = int((sp.cumsum(0) < top_p).sum()) + 1
                        probs = torch.zeros_like(probs).scatter(0, si[:cut], sp[:cut])
                    t = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
                else:
                    t = int(logits.argmax())
                if t in self._eos:
                    result = Generation(self.detokenize(toks), "eos", len(toks))
                    break
                toks.append(t)
                text = self.detokenize(toks)
                hits = [(text.find(s), s) for s in stop if s in text]
                if hits:
                    pos, s = min(hits)
                    result = Generation(text[:pos], s, len(toks))
                elif len(toks) >= max_new_tokens:
                    result = Generation(text, "length", len(toks))
                else:
                    logits = self._forward([t], self._cache).logits[0, -1].float()
            # The cache now holds generated tokens too; forget them so the prefix stays reusable.
            self._cache.crop(len(prompt))
            self._cached = list(prompt)
            results.append(result)
        if not self.reuse:
            self.close()
        return results
