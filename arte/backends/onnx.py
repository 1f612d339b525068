"""ONNX Runtime student: a (LoRA-merged) model exported by optimum, run with onnxruntime.

Contract: ``export_onnx(hf_dir, out_dir)`` exports an HF model directory (e.g. the base with its LoRA
merged, :func:`arte.export.merge_lora`) with optimum's ``text-generation-with-past`` task: one
``model.onnx`` that takes ``input_ids``, ``attention_mask``, ``position_ids`` and the past keys/values of
every layer, and returns ``logits`` and the ``present`` keys/values. ``OnnxStudent`` implements
:class:`arte.student.Student` over a raw ``onnxruntime.InferenceSession`` (numpy in, numpy out):

* the keys/values of the last prompt are kept; a new prompt evaluates only the tokens after its longest
  common prefix with it (the past is cropped to the prefix), so a draft's demonstration is evaluated once
  for all its items, as on the other backends;
* ``loglik`` evaluates the prompt once, then all its continuations together as one batch over the
  prompt's past (repeated along the batch axis);
* ``generate`` decodes greedily (or samples) one prompt at a time, one token per run, reusing the past.

The exported graph computes logits for every input position (49,152 × 4 bytes each), so prompt
evaluation costs about a quarter more than the backbone alone; results are exact either way.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from arte.backends.hf import HFTokenized, load_hf
from arte.errors import BackendError, ConfigError, ModelError
from arte.models import ModelRef
from arte.student import (
    Closes,
    Continuation,
    Generation,
    OnePromptAtATime,
    longest_common_prefix,
)

__all__ = ["OnnxStudent", "export_onnx", "is_onnx_dir"]

log = logging.getLogger(__name__)


def is_onnx_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an exported ``model.onnx`` and its ``config.json``."""
    p = Path(path)
    return (p / "model.onnx").is_file() and (p / "config.json").is_file()


def export_onnx(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Export the HF model in ``hf_dir`` to ``out_dir`` (model.onnx, config, tokenizer). ~30 s and ~3 GB
    of memory for the 135M default model. Written to a temporary directory, then renamed."""

    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model = ORTModelForCausalLM.from_pretrained(str(hf_dir), export=True)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(hf_dir)).save_pretrained(tmp)
    except (OSError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"optimum could not export {hf_dir} to ONNX: {e}") from e
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


class OnnxStudent(HFTokenized, OnePromptAtATime, Closes):
    """An exported causal LM on onnxruntime (CPU by default)."""

    def __init__(self, model_dir: str | Path, *, n_threads: int | None = None, name: str | None = None,
                 reuse: bool = True, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        if not is_onnx_dir(model_dir):
            raise ModelError(f"{model_dir} holds no exported model.onnx + config.json (export it with "
                             f"arte.backends.onnx.export_onnx)")
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.reuse = reuse
        cfg = json.loads((self.model_dir / "config.json").read_text())
        self._n_ctx = int(cfg.get("max_position_embeddings", 2048))
        opts = ort.SessionOptions()
        # Worker threads sleep rather than spin between ops: a device shares its CPU, and on a busy 2-core
        # machine spinning made decoding 2.5-5x slower (measured: 177-381 vs 71-88 ms/token).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if n_threads:
            opts.intra_op_num_threads = n_threads
            opts.inter_op_num_threads = 1
        try:
            self._sess = ort.InferenceSession(str(self.model_dir / "model.onnx"), opts, providers=list(providers))
        except Exception as e:   # onnxruntime raises its own exception types for bad files
            raise ModelError(f"onnxruntime could not load {self.model_dir / 'model.onnx'}: {e}") from e
        self.tok = AutoTokenizer.from_pretrained(str(self.model_dir))
        inputs = {i.name: i for i in self._sess.get_inputs()}
        self._past_names = sorted((n for n in inputs if n.startswith("past_key_values.")),
                                  key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
        if not self._past_names or "position_ids" not in inputs:
            raise ModelError(f"{self.model_dir / 'model.onnx'} was not exported with past keys/values "
                             f"(task text-generation-with-past)")
        shape = inputs[self._past_names[0]].shape   # [batch, kv_heads, past, head_dim]
        self._kv_shape = (int(shape[1]), int(shape[3]))
        self._dtype = np.float16 if "float16" in inputs[self._past_names[0]].type else np.float32
        self._present_names = [n.replace("past_key_values.", "present.") for n in self._past_names]
        eos = cfg.get("eos_token_id")
        eos_ids = (eos if isinstance(eos, list) else [eos]) + [self.tok.eos_token_id]
        self._eos = {int(t) for t in eos_ids if t is not None}
        self._past: list[np.ndarray] | None = None
        self._cached: list[int] = []
        self.tokens_evaluated = 0

    @classmethod
    def from_ref(cls, ref: ModelRef, *, n_threads: int | None = None, export_dir: str | Path | None = None,
                 convert_dir: str | Path | None = None, reuse: bool = True) -> "OnnxStudent":
        """Open an exported directory; any other model (GGUF, HF dir) is exported into ``export_dir``
        (default: ``convert_dir``) first, and reused from there later."""
        if ref.kind == "hf" and is_onnx_dir(ref.path):
            return cls(ref.path, n_threads=n_threads, name=ref.name, reuse=reuse)
        export_dir = export_dir or convert_dir
        if export_dir is None:
            raise ModelError(f"{ref.path} is not an exported ONNX model; give export_dir (or convert_dir) to "
                             f"export it, or export it with arte.backends.onnx.export_onnx")
        target = Path(export_dir) / f"{ref.name}-{(ref.sha256 or 'local')[:12]}-onnx"
        if not is_onnx_dir(target):

            model, tok = load_hf(ref, convert_dir=convert_dir)
            Path(export_dir).mkdir(parents=True, exist_ok=True)
            hf_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}-hf-", dir=export_dir))
            try:
                model.save_pretrained(hf_dir)
                tok.save_pretrained(hf_dir)
                del model
                export_onnx(hf_dir, target)
            finally:
                shutil.rmtree(hf_dir, ignore_errors=True)
        return cls(target, n_threads=n_threads, name=ref.name, reuse=reuse)

    # ---- protocol ---------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def close(self) -> None:
        self._past = None
        self._cached = []

    # ---- running the graph ------------------------------------------------------------------------

    def _empty_past(self, batch: int) -> list[np.ndarray]:
        heads, dim = self._kv_shape
        return [np.zeros((batch, heads, 0, dim), dtype=self._dtype) for _ in self._past_names]

    def _run(self, ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Evaluate ``ids`` (batch, n) after ``past``; returns (logits (batch, n, vocab), new past)."""
        b, n = ids.shape
        p = past[0].shape[2]
        feed = {"input_ids": ids.astype(np.int64),
                "attention_mask": np.ones((b, p + n), dtype=np.int64),
                "position_ids": np.broadcast_to(np.arange(p, p + n, dtype=np.int64), (b, n)).copy()}
        feed.update(zip(self._past_names, past))
        try:
            out = self._sess.run(["logits"] + self._present_names, feed)
        except Exception as e:   # onnxruntime's own error types
            raise BackendError(f"onnxruntime failed on {b} x {n} tokens after {p}: {e}") from e
        self.tokens_evaluated += b * n
        return out[0], out[1:]

    def _prime(self, prompt: Sequence[int]) -> np.ndarray:
        """Make the kept past hold ``prompt``; returns the logits after its last token."""
        if not prompt:
            raise BackendError("empty prompt")
        if len(prompt) > self._n_ctx:
            raise BackendError(f"prompt of {len(prompt)} tokens exceeds the context of {self._n_ctx}")
        keep = min(longest_common_prefix(self._cached, prompt), len(prompt) - 1) if self.reuse else 0
        past = self._empty_past(1) if keep == 0 or self._past is None else [a[:, :, :keep] for a in self._past]
        logits, self._past = self._run(np.array([prompt[keep:]]), past)
        self._cached = list(prompt)
        return logits[0, -1]

    def loglik(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[Continuation]:
        if any(len(c) == 0 for c in continuations):
            raise BackendError("empty continuation")
        first = _log_softmax(self._prime(prompt))
        multi = [c for c in continuations if len(c) > 1]
        rows: np.ndarray | None = None
        if multi:
            width = max(len(c) - 1 for c in multi)
            pad = self.tok.pad_token_id or 0
            ids = np.array([list(c[:-1]) + [pad] * (width - len(c) + 1) for c in multi])
            past = [np.repeat(a, len(multi), axis=0) for a in self._past]
            logits, _ = self._run(ids, past)   # right padding: only positions before it are read
            rows = _log_softmax(logits)
        out, k = [], 0
        for c in continuations:
            dists = [first] + ([rows[k, i] for i in range(len(c) - 1)] if len(c) > 1 else [])
            k += len(c) > 1
            lp = float(sum(d[t] for d, t in zip(dists, c)))
            out.append(Continuation(lp, len(c), all(int(d.argmax()) == t for d, t in zip(dists, c))))
        if not self.reuse:
            self.close()
        return out

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0) -> list[Generation]:
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be >= 1, got {max_new_tokens}")
        results = []
        for i, prompt in enumerate(prompts):
            rng = np.random.default_rng([seed, i])
            logits = self._prime(prompt)
            past = self._past   # the prompt's past stays kept; decoding extends copies of it
            toks: list[int] = []
            while True:
                if temperature > 0:
                    p = np.exp(_log_softmax(logits / temperature))
                    t = int(rng.choice(len(p), p=p / p.sum()))
                else:
                    t = int(logits.argmax())
                if t in self._eos:
                    results.append(Generation(self.detokenize(toks), "eos", len(toks)))
                    break
                toks.append(t)
                text = self.detokenize(toks)
                hits = [(text.find(s), s) for s in stop if s in text]
                if hits:
                    pos, s = min(hits)
                    results.append(Generation(text[:pos], s, len(toks)))
                    break
                if len(toks) >= max_new_tokens:
                    results.append(Generation(text, "length", len(toks)))
                    break
                if len(prompt) + len(toks) >= self._n_ctx:
                    raise BackendError(f"generation reached the context of {self._n_ctx} tokens")
                out, past = self._run(np.array([[t]]), past)
                logits = out[0, -1]
        if not self.reuse:
            self.close()
        return results
