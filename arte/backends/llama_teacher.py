"""A teacher on llama.cpp: a GGUF chat model, decoding many conversations in parallel.

Contract: implements :class:`arte.teacher.Teacher` on top of :class:`arte.backends.llama.LlamaCppStudent`
(which owns the native model and does the sampling, stop strings and parallel decoding). Conversations
are rendered with the GGUF's own ``tokenizer.chat_template`` (jinja2, :func:`arte.teacher.render_chat`)
and tokenized with special tokens parsed, so ``<|im_start|>`` and friends become their control tokens.
Up to ``n_parallel`` conversations decode together; fewer when their prompts plus ``max_new_tokens``
would not fit the context. Conversation ``i`` samples with the stream ``(seed, i)``.

``formats`` constrain decoding: each constrained conversation gets a :class:`arte.constrain.TokenGuard`
over the GGUF vocabulary (every token's bytes, read once per teacher), consulted by the decode loop after
each sampled token.

One GGUF LoRA adapter may be applied at load (``lora_path``); switching adapters means opening another
teacher (adapters trained by :mod:`arte.dpo` are PEFT adapters: use the torch teacher for those, since
a Q4 base hides small DPO deltas, see RUNTIME-NOTES §7b).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from arte.backends.llama import LlamaCppStudent
from arte.constrain import TokenGuard, Vocabulary, check_formats
from arte.errors import BackendError, ModelError
from arte.grammar import Format
from arte.student import Closes
from arte.teacher import Message, check_conversations, check_sampling, render_chat

__all__ = ["LlamaCppTeacher"]


class LlamaCppTeacher(Closes):
    """A GGUF chat model on llama.cpp as a teacher."""

    def __init__(self, model_path: str | Path, *, n_ctx: int = 8192, n_threads: int | None = None,
                 n_parallel: int = 8, lora_path: str | Path | None = None, name: str | None = None,
                 chat_template: str | None = None, **kwargs: Any) -> None:

        self._llm = LlamaCppStudent(model_path, n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel,
                                    lora_path=lora_path, name=name, **kwargs)
        self.name = self._llm.name
        self.n_parallel = n_parallel
        self._adapter = str(lora_path) if lora_path else None
        template = chat_template or self._llm.metadata("tokenizer.chat_template")
        if not template:
            self._llm.close()
            raise ModelError(f"{model_path} has no tokenizer.chat_template; pass chat_template=")
        self.chat_template = template
        self._bos = self._special("tokenizer.ggml.bos_token_id")
        self._eos = self._special("tokenizer.ggml.eos_token_id")
        self._vocab: Vocabulary | None = None

    def _special(self, key: str) -> str:
        value = self._llm.metadata(key)
        return self._llm.token_text(int(value)) if value is not None and value.isdigit() else ""

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx

    def close(self) -> None:
        self._llm.close()

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text of one conversation, ending where the assistant's reply starts."""
        return render_chat(self.chat_template, messages, bos_token=self._bos, eos_token=self._eos)

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the rendered conversation (special tokens parsed; BOS added when the model wants
        one and the template did not write it)."""
        text = self.render(messages)
        bos = not (self._bos and text.startswith(self._bos))
        return self._llm.tokenize(text, bos=bos, special=True)

    def vocabulary(self) -> Vocabulary:
        """Every token's bytes and the end-of-generation ids, for constrained decoding (read once)."""
        if self._vocab is None:
            llm = self._llm
            pieces = [b"" if llm.is_eog(t) else llm.piece(t) for t in range(llm.n_vocab)]
            eog = frozenset(t for t in range(llm.n_vocab) if llm.is_eog(t))
            if not eog:
                raise ModelError(f"{self.name} has no end-of-generation token; it cannot be constrained")
            value = llm.metadata("tokenizer.ggml.eos_token_id")
            eos = int(value) if value is not None and value.isdigit() and int(value) in eog else min(eog)
            self._vocab = Vocabulary(pieces, eog, eos)
        return self._vocab

    def chat(self, conversations: Sequence[Sequence[Message]], *, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, stop: Sequence[str] = (), top_p: float = 1.0,
             formats: Sequence[Format | None] | None = None,
             counts: dict[str, int] | None = None) -> list[str]:
        convs = check_conversations(conversations)
        check_sampling(temperature, max_new_tokens, top_p)
        fmts = check_formats(formats, len(convs))
        guards = None
        if any(f is not None for f in fmts):
            vocab = self.vocabulary()
            tally = counts if counts is not None else {}
            guards = [TokenGuard(f, vocab, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 counts=tally) if f is not None else None for f in fmts]
        prompts = [self.prompt_tokens(m) for m in convs]
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.n_ctx:
            raise BackendError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} does not fit "
                               f"the teacher's context of {self.n_ctx} tokens")
        # Decode as many conversations together as the context holds (the wave size does not change which
        # random stream a conversation uses, so results do not depend on it).
        self._llm.n_parallel = max(1, min(self.n_parallel, self.n_ctx // (longest + max_new_tokens)))
        gens = self._llm.generate(prompts, max_new_tokens=max_new_tokens, stop=list(stop),
                                  temperature=temperature, seed=seed, top_p=top_p, guards=guards)
        return [g.text for g in gens]
