"""A teacher on torch/transformers, with PEFT LoRA adapters switched by name on one base model.

Contract: implements :class:`arte.teacher.Teacher`. The base model is loaded once (``load_hf``: the GGUF
dequantized, or an HF directory); :meth:`TorchTeacher.load_adapter` attaches a PEFT adapter under a name
(e.g. one per cohort) and :meth:`TorchTeacher.set_adapter` picks which one generates (``None``: the bare
base, with every adapter disabled). Conversations are rendered with the tokenizer's chat template and
generated in left-padded batches of ``batch_size``; a batch samples from one torch generator seeded from
``(seed, batch start)``, so a call is reproducible for the same seed and batch size, on the same device.

``formats`` constrain decoding: a batch with a constrained conversation is decoded with a logits processor
that draws each row's token itself (softmax(logits / T), top-p, a numpy stream per conversation from
``(seed, index)``), passes it through the row's :class:`arte.constrain.TokenGuard`, and leaves
transformers only that token to pick. The guard needs each token's bytes: read from the tokenizer's
byte-level (GPT-2 style) or SentencePiece (``▁``, ``<0xNN>``) vocabulary.

:meth:`TorchTeacher.completion_logprobs` gives log p(completion | conversation) under the active adapter
(or the base), the quantity DPO's implicit reward is built from.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from arte.backends.hf import load_hf
from arte.constrain import TokenGuard, Vocabulary, check_formats, sample
from arte.errors import ConfigError, ModelError
from arte.grammar import Format
from arte.models import ModelRef
from arte.student import Closes
from arte.teacher import Message, check_conversations, check_sampling

__all__ = ["TorchTeacher"]

log = logging.getLogger(__name__)


class TorchTeacher(Closes):
    """A transformers chat model as a teacher (CPU or CUDA)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "torch", batch_size: int = 8) -> None:
        import torch

        if batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        self._torch = torch
        self.base = model
        self.model = model          # becomes a PeftModel once an adapter is loaded
        self.tok = tokenizer
        self.name = name
        self.batch_size = batch_size
        self._adapters: dict[str, str] = {}
        self._active: str | None = None
        self._vocab: Vocabulary | None = None

    @classmethod
    def from_ref(cls, ref: ModelRef, *, convert_dir: str | Path | None = None, device: str = "cpu",
                 dtype: Any = None, device_map: str | None = None,
                 adapters: Mapping[str, str | Path] | None = None, batch_size: int = 8) -> "TorchTeacher":
        """Load ``ref`` (see :func:`arte.backends.hf.load_hf`; ``device_map="auto"`` spreads it over every
        GPU) and attach ``adapters`` ({name: dir}); the last one listed is active."""

        model, tok = load_hf(ref, dtype=dtype, convert_dir=convert_dir, device=device, device_map=device_map)
        teacher = cls(model, tok, name=ref.name, batch_size=batch_size)
        for adapter_name, path in (adapters or {}).items():
            teacher.load_adapter(adapter_name, path)
        return teacher

    # ---- adapters -----------------------------------------------------------------------------------

    @property
    def adapter(self) -> str | None:
        return self._active

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapters: {name: directory}."""
        return dict(self._adapters)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Attach the PEFT adapter in ``path`` under ``name`` and make it active."""
        from peft import PeftModel

        p = Path(path)
        if not (p / "adapter_config.json").is_file():
            raise ModelError(f"{p} is not a PEFT adapter directory (no adapter_config.json)")
        if not name or name in self._adapters:
            raise ConfigError("name", f"adapter name must be new and non-empty, got {name!r}")
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(p), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.base, str(p), adapter_name=name)
        self.model.eval()
        self._adapters[name] = str(p)
        self.set_adapter(name)

    def set_adapter(self, name: str | None) -> None:
        """Generate with adapter ``name``, or with the bare base model when None."""
        if name is not None:
            if name not in self._adapters:
                raise ConfigError("adapter", f"no adapter named {name!r}; loaded: {sorted(self._adapters)}")
            self.model.set_adapter(name)
        self._active = name

    def _context(self) -> Any:
        if self._active is None and self._adapters:
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    # ---- text ---------------------------------------------------------------------------------------

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text of one conversation, ending where the assistant's reply starts (or, when the
        last message is the assistant's, right after its content)."""
        if messages and messages[-1]["role"] == "assistant":
            return self.tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=False,
                                                continue_final_message=True)
        return self.tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    def close(self) -> None:
        pass

    def vocabulary(self) -> Vocabulary:
        """Every token's bytes and the end-of-generation ids, for constrained decoding (read once)."""
        if self._vocab is None:
            n_logits = int(self.base.get_output_embeddings().weight.shape[0])
            self._vocab = hf_vocabulary(self.tok, n_logits, self.base.generation_config.eos_token_id)
        return self._vocab

    def chat(self, conversations: Sequence[Sequence[Message]], *, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, stop: Sequence[str] = (), top_p: float = 1.0,
             formats: Sequence[Format | None] | None = None,
             counts: dict[str, int] | None = None) -> list[str]:
        torch = self._torch
        convs = check_conversations(conversations)
        check_sampling(temperature, max_new_tokens, top_p)
        fmts = check_formats(formats, len(convs))
        tally = counts if counts is not None else {}
        prompts = self._encode([self.render(m) for m in convs])
        device = self.base.device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad,
                                      "do_sample": temperature > 0}
            if temperature > 0:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if stop:
                kwargs.update(stop_strings=list(stop), tokenizer=self.tok)
            batch_formats = fmts[start:start + self.batch_size]
            if any(f is not None for f in batch_formats):
                from transformers import LogitsProcessorList

                vocab = self.vocabulary()
                guards = [TokenGuard(f, vocab, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     counts=tally) if f is not None else None for f in batch_formats]
                rngs = [np.random.default_rng([seed, start + i]) for i in range(len(batch))]
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                              logits_processor=LogitsProcessorList([_Guarded(guards, rngs, temperature, top_p)]))
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self._context():
                torch.manual_seed(hash((seed, start)) & 0x7FFFFFFF)
                gen = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row in gen[:, width:].tolist():
                text = self.tok.decode(row, skip_special_tokens=True)
                cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
                out.append(text[:cut] if cut >= 0 else text)
        return out

    def completion_logprobs(self, conversations: Sequence[Sequence[Message]], completions: Sequence[str],
                            *, batch_size: int | None = None) -> list[float]:
        """Sum of log p(token) over each completion's tokens, given its rendered conversation, under the
        active adapter (or the base)."""
        torch = self._torch
        convs = check_conversations(conversations)
        if len(convs) != len(completions):
            raise ConfigError("completions", f"expected {len(convs)} completions, got {len(completions)}")
        prompts = self._encode([self.render(m) for m in convs])
        conts = self._encode(list(completions))
        if any(not c for c in conts):
            raise ConfigError("completions", "a completion is empty")
        bs = batch_size or self.batch_size
        device = self.base.device
        out: list[float] = []
        for start in range(0, len(prompts), bs):
            seqs = [(p + c, len(p)) for p, c in zip(prompts[start:start + bs], conts[start:start + bs])]
            width = max(len(s) for s, _ in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
            att = torch.zeros_like(ids)
            sel = torch.zeros((len(seqs), width), dtype=torch.bool, device=device)
            for i, (s, n_p) in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s, device=device)
                att[i, :len(s)] = 1
                sel[i, n_p:len(s)] = True
            with torch.no_grad(), self._context():
                logits = self.model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
            lp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None])[..., 0]
            out += (lp * sel[:, 1:]).sum(-1).tolist()
        return out


class _Guarded:
    """A logits processor that picks each row's token (sampled, then passed through the row's guard) and
    leaves transformers' greedy search only that token."""

    def __init__(self, guards: list[TokenGuard | None], rngs: list[np.random.Generator], temperature: float,
                 top_p: float) -> None:
        self.guards, self.rngs, self.temperature, self.top_p = guards, rngs, temperature, top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        rows = scores.detach().float().cpu().numpy()
        out = scores.new_full(scores.shape, float("-inf"))
        for i, (x, guard, rng) in enumerate(zip(rows, self.guards, self.rngs)):
            token = sample(x, self.temperature, self.top_p, rng)
            if guard is not None:
                token = guard.choose(token, x, rng)
            out[i, token] = 0.0
        return out


def hf_vocabulary(tok: Any, n_logits: int, eos: int | Sequence[int] | None = None) -> Vocabulary:
    """Each token's bytes for a transformers tokenizer (byte-level BPE, or SentencePiece with byte
    fallback), padded with empty pieces to ``n_logits``; special tokens are empty. The end-of-generation
    ids are the tokenizer's EOS and ``eos`` (the generation config's)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    special = set(tok.all_special_ids)
    names = tok.convert_ids_to_tokens(list(range(len(tok))))
    byte_level = all(all(c in byte_of for c in n) for t, n in enumerate(names) if n and t not in special)
    pieces: list[bytes] = []
    for t, name in enumerate(names):
        if t in special or not name:
            pieces.append(b"")
        elif byte_level:
            pieces.append(bytes(byte_of[c] for c in name))
        elif len(name) == 6 and name.startswith("<0x") and name.endswith(">"):
            pieces.append(bytes([int(name[3:5], 16)]))
        else:
            pieces.append(name.replace("\u2581", " ").encode("utf-8"))
    pieces += [b""] * max(0, n_logits - len(pieces))
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    eog = frozenset(i for i in [tok.eos_token_id, *ids] if i is not None and 0 <= i < len(pieces))
    if not eog:
        raise ModelError("the tokenizer has no EOS token; it cannot be constrained")
    first = tok.eos_token_id if tok.eos_token_id in eog else min(eog)
    return Vocabulary(pieces, eog, first)
