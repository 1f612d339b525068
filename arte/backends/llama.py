"""llama.cpp student (GGUF), on llama-cpp-python's raw bindings.

Contract: implements :class:`arte.student.Student`. It owns one native model, one context and one batch
(``close()`` frees them) and never evaluates a token twice when it can reuse it:

* Sequence 0 holds the last evaluated prompt. A new prompt evaluates only the tokens after its longest
  common prefix with it, so a draft's demonstration prefix is evaluated once for all its items.
* ``loglik_batch`` (``parallel=True``, the default) evaluates the requests' common prefix once, then all
  the rest — every item and every option of a draft — as one token trie: shared tokens are decoded once
  and tagged with every sequence that passes through them (a unified KV cache; ``llama_memory_seq_cp``
  tags cells, it copies nothing), with logits only where a continuation token is predicted.
* ``generate`` and ``reason_loglik`` evaluate the prompts' common prefix once and decode up to
  ``n_parallel`` sequences in one batch per step, a new prompt taking the place of one that stops; in
  ``reason_loglik`` a stopped sequence's options are scored in its own cells, in the next step's batch
  (:mod:`arte.backends.llama_parallel`).

Three evaluation strategies, one code path each:

* ``reuse=False``: every (prompt + continuation) and every prompt from an empty cache, one at a time —
  the naive baseline that tests and benchmarks compare against;
* ``parallel=False``: prefix reuse, one sequence at a time (``reason_loglik``: the reasoning, then its
  options, :func:`arte.student.reason_then_loglik`). Every token sits in the same KV cell as in naive
  evaluation, so results are **bit-identical** to naive;
* ``parallel=True`` (default): the trie / parallel decoding above. Other sequences' cells now sit between
  a sequence's own cells; attention sums then round differently in the last bits, and the 8-bit
  activation quantization of Q4 weights amplifies that to a few hundredths of a nat (the same noise
  floor as any other change of input, RUNTIME-NOTES §7b), and a greedy reasoning may take the other
  token at a near-tie. Decisions agree with naive on nearly every item (measured by ``tests/slow`` and
  ``benchmarks/scoring.py``).

Flash attention is off by default: on the CPU it makes logits depend on how tokens are split into
batches (up to 0.2 nats on the default model), which even naive evaluation cannot control.

Why raw bindings rather than ``llama_cpp.Llama``: ``Llama`` keeps one sequence and either one logits row
or all of them (``logits_all`` costs n_ctx × vocab floats and ~13 % of prompt speed); selective logits
and shared-prefix parallel sequences need the batch API.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from arte.backends.llama_parallel import _Entry, decode_parallel, row_logprobs
from arte.errors import BackendError, ConfigError, ModelError
from arte.student import Closes, Continuation, Generation, Reasoned, longest_common_prefix, reason_then_loglik

__all__ = ["LlamaCppStudent"]

log = logging.getLogger(__name__)

# Parallel sequences per context (sequence 0 holds the shared prefix). llama.cpp allows up to 256.
_SLOTS = 64


class LlamaCppStudent(Closes):
    """A GGUF model on llama.cpp (CPU, or GPU layers with ``n_gpu_layers``)."""

    def __init__(self, model_path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, n_parallel: int = 8, n_gpu_layers: int = 0,
                 lora_path: str | Path | None = None, lora_scale: float = 1.0, reuse: bool = True,
                 parallel: bool = True, flash_attn: bool = False, verbose: bool = False, name: str | None = None) -> None:
        # llama.cpp reserves one output row per sequence, within the n_batch output rows.
        self._slots = min(_SLOTS, n_batch - 1)
        if not 1 <= n_parallel <= self._slots:
            raise ConfigError("n_parallel", f"must be in [1, {self._slots}] (and n_batch > n_parallel), "
                                            f"got {n_parallel}")
        if n_batch < 1 or n_ctx < n_batch:
            raise ConfigError("n_batch", f"must be in [1, n_ctx={n_ctx}], got {n_batch}")
        import llama_cpp
        from llama_cpp import _logger

        _logger.set_verbose(verbose)
        self._ll = llama_cpp
        self.name = name or Path(model_path).stem
        self.reuse = reuse
        self.parallel = parallel and reuse
        self.n_parallel = n_parallel if self.parallel else 1
        self.model_path = Path(model_path)
        self.lora_path = Path(lora_path) if lora_path else None
        self._model = self._ctx = self._batch = self._adapter = None
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mp)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {model_path} (not a supported GGUF model?)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._bos = llama_cpp.llama_vocab_bos(self._vocab)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = self._slots + 1
        cp.kv_unified = True
        # Flash attention on the CPU makes logits depend on how tokens are split into batches.
        cp.flash_attn_type = 1 if flash_attn else 0
        threads = n_threads or 0
        if threads > 0:
            cp.n_threads = threads
            cp.n_threads_batch = threads
        self._ctx = llama_cpp.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise BackendError(f"llama.cpp could not create a context of {n_ctx} tokens for {model_path}")
        self._n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self._n_batch = n_batch
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, self._slots + 1)
        if self.lora_path is not None:
            self._adapter = llama_cpp.llama_adapter_lora_init(self._model, str(self.lora_path).encode())
            if not self._adapter:
                self.close()
                raise ModelError(f"llama.cpp could not load the LoRA adapter {self.lora_path} for {model_path}")
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapter)
            scales = (ctypes.c_float * 1)(lora_scale)
            if llama_cpp.llama_set_adapters_lora(self._ctx, arr, 1, scales) != 0:
                self.close()
                raise ModelError(f"llama.cpp refused the LoRA adapter {self.lora_path}")
        self._seq0: list[int] = []
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self.tokens_evaluated = 0   # tokens decoded, for benchmarks
        self.decode_calls = 0

    # ---- native handles ---------------------------------------------------------------------------

    def close(self) -> None:
        """Free the batch, context, adapter and model (idempotent)."""
        ll = self._ll
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            ll.llama_free(self._ctx)
        self._ctx = None
        if self._adapter:
            ll.llama_adapter_lora_free(self._adapter)
        self._adapter = None
        if self._model:
            ll.llama_model_free(self._model)
        self._model = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    # ---- tokens -----------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as a string (e.g. ``tokenizer.chat_template``), or None."""
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def tokenize(self, text: str, *, bos: bool = False, special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (self._ll.llama_token * cap)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), arr, cap, False, special)
        if n < 0:  # pragma: no cover - cap is always enough for byte-level vocabularies
            raise BackendError(f"tokenization needs {-n} tokens, more than {cap}")
        ids = list(arr[:n])
        if bos and self._add_bos and self._bos >= 0:
            ids.insert(0, self._bos)
        return ids

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as empty); cached per token."""
        out = self._pieces.get(token)
        if out is None:
            buf = ctypes.create_string_buffer(64)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            out = self._pieces[token] = buf.raw[:n]
        return out

    def token_text(self, token: int) -> str:
        """The vocabulary text of a token, special tokens included (e.g. ``<|im_start|>``)."""
        raw = self._ll.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        out = self._eog.get(token)
        if out is None:
            out = self._eog[token] = bool(self._ll.llama_vocab_is_eog(self._vocab, token))
        return out

    # ---- the KV cache (every native cache operation goes through these four) ----------------------

    def _decode(self, entries: Sequence[_Entry], on_row: Callable[[int, np.ndarray], None]) -> None:
        """Decode entries in batches of ``n_batch``; ``on_row(entry index, logits)`` is called for every entry
        that asked for logits, with a view of llama.cpp's buffer that is valid only during the call."""
        ll, b = self._ll, self._batch
        for start in range(0, len(entries), self._n_batch):
            chunk = entries[start:start + self._n_batch]
            b.n_tokens = len(chunk)
            for i, e in enumerate(chunk):
                b.token[i] = e.token
                b.pos[i] = e.pos
                b.n_seq_id[i] = 1 + len(e.also)
                b.seq_id[i][0] = e.seq
                for k, extra in enumerate(e.also, start=1):
                    b.seq_id[i][k] = extra
                b.logits[i] = e.logits
            rc = ll.llama_decode(self._ctx, b)
            if rc != 0:
                raise BackendError(f"llama_decode failed with status {rc} (1: no room in the KV cache of "
                                   f"{self._n_ctx} tokens; raise n_ctx or lower n_parallel)")
            self.decode_calls += 1
            self.tokens_evaluated += len(chunk)
            for i, e in enumerate(chunk):
                if e.logits:
                    ptr = ll.llama_get_logits_ith(self._ctx, i)
                    on_row(start + i, np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        """Drop ``seq``'s cells at positions [p0, p1) (-1: open end)."""
        self._ll.llama_memory_seq_rm(self._mem, seq, p0, p1)

    def _seq_cp(self, src: int, dst: int) -> None:
        """Tag every cell of ``src`` with ``dst`` too (nothing is copied)."""
        self._ll.llama_memory_seq_cp(self._mem, src, dst, -1, -1)

    def _clear(self) -> None:
        self._ll.llama_memory_clear(self._mem, True)
        self._seq0 = []

    def _decode_scores(self, entries: Sequence[_Entry], targets: dict[int, Sequence[int]]
                       ) -> dict[int, list[tuple[float, bool]]]:
        """Decode; for each entry index in ``targets``, ``(log p, is argmax)`` of each of its target tokens."""
        out: dict[int, list[tuple[float, bool]]] = {}

        def keep(k: int, row: np.ndarray) -> None:
            out[k] = row_logprobs(row, targets[k])
        self._decode(entries, keep)
        return out

    # ---- decoding ---------------------------------------------------------------------------------

    def _prime(self, prompt: Sequence[int], targets: Sequence[int] = ()) -> list[tuple[float, bool]] | None:
        """Make sequence 0 hold ``prompt`` (evaluating only what differs from what it holds). With
        ``targets``, returns ``(log p, is argmax)`` of each target token after the prompt's last token."""
        if not prompt:
            raise BackendError("empty prompt")
        if len(prompt) >= self._n_ctx:
            raise BackendError(f"prompt of {len(prompt)} tokens does not fit the context of {self._n_ctx}")
        if not self.reuse:
            self._clear()
        keep = longest_common_prefix(self._seq0, prompt)
        if targets:   # the last token is re-evaluated when its logits are needed
            keep = min(keep, len(prompt) - 1)
        self._seq_rm(0, keep, -1)
        self._seq0 = list(prompt)
        todo = [_Entry(t, keep + i, 0, False) for i, t in enumerate(prompt[keep:])]
        if not todo:
            return None
        todo[-1].logits = bool(targets)
        try:
            return self._decode_scores(todo, {len(todo) - 1: targets}).get(len(todo) - 1)
        except BackendError:
            self._clear()
            raise

    def loglik(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[Continuation]:
        return self.loglik_batch([(prompt, continuations)])[0]

    def loglik_batch(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]
                     ) -> list[list[Continuation]]:
        """``loglik`` for several prompts at once: the prompts' common prefix is evaluated once, the
        rest as a token trie (shared tokens decoded once, tagged with every sequence through them) in
        as few batches as the context allows."""
        for prompt, conts in requests:
            if not prompt:
                raise BackendError("empty prompt")
            if any(len(c) == 0 for c in conts):
                raise BackendError("empty continuation")
            longest = len(prompt) + max((len(c) for c in conts), default=0)
            if longest > self._n_ctx:
                raise BackendError(f"prompt + continuation ({longest} tokens) exceed the context of {self._n_ctx}")
        if not self.reuse:
            return [[self._loglik_naive(p, c) for c in conts] for p, conts in requests]
        if not self.parallel:
            return [self._loglik_sequential(p, c) for p, c in requests]
        out: list[list[Continuation]] = []
        for group in self._groups(requests):
            out += self._loglik_group(group)
        return out

    def _groups(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> list[list]:
        """Split requests into groups whose continuations fit the slots and whose tokens fit the cache."""
        groups: list[list] = []
        group: list = []
        for req in requests:
            trial = group + [req]
            common = _common_prefix([p for p, _ in trial])
            cells = common + sum(len(p) - common + sum(len(c) for c in cs) for p, cs in trial)
            if group and (sum(len(cs) for _, cs in trial) > self._slots or cells > self._n_ctx):
                groups.append(group)
                trial = [req]
            group = trial
        if group:
            groups.append(group)
        return groups

    def _loglik_group(self, group: list) -> list[list[Continuation]]:
        common = _common_prefix([p for p, _ in group])
        if common > 0:
            self._prime(group[0][0][:common])
        else:
            self._clear()
        nodes: dict[tuple[int, int], int] = {}     # (parent node, token) -> entry index
        entries: list[_Entry] = []
        seqs: list[list[int]] = []                   # entry index -> sequences through it
        targets: dict[int, list[int]] = {}           # entry index -> tokens its row predicts
        paths: list[tuple[int, int, list[int]]] = []  # (request, continuation, entry indices)
        for r, (prompt, conts) in enumerate(group):
            for k, cont in enumerate(conts):
                seq = len(paths) + 1
                toks = list(prompt[common:]) + list(cont[:-1])
                need_from = len(toks) - len(cont)    # rows predicting the continuation's tokens
                parent, idx = -1, []
                for d, t in enumerate(toks):
                    node = nodes.get((parent, t))
                    if node is None:
                        node = nodes[(parent, t)] = len(entries)
                        entries.append(_Entry(t, common + d, seq, False))
                        seqs.append([])
                    seqs[node].append(seq)
                    if d >= need_from:
                        entries[node].logits = True
                        if cont[d - need_from] not in targets.setdefault(node, []):
                            targets[node].append(cont[d - need_from])
                    idx.append(node)
                    parent = node
                paths.append((r, k, idx[need_from:]))
        for i, e in enumerate(entries):
            e.seq, e.also = seqs[i][0], tuple(seqs[i][1:])
        n_seq = len(paths)
        if common > 0:
            for s in range(1, n_seq + 1):
                self._seq_cp(0, s)
        try:
            rows = self._decode_scores(entries, targets)
        finally:
            self._drop_parallel(range(1, n_seq + 1))
        results: list[list[Continuation]] = [[None] * len(c) for _, c in group]  # type: ignore[list-item]
        for r, k, idx in paths:
            cont = group[r][1][k]
            results[r][k] = _score([rows[i][targets[i].index(t)] for i, t in zip(idx, cont)], cont)
        return results

    def _drop_parallel(self, seqs: Sequence[int]) -> None:
        for s in seqs:
            self._seq_rm(s, -1, -1)

    def _loglik_sequential(self, prompt: Sequence[int], conts: Sequence[Sequence[int]]) -> list[Continuation]:
        firsts = self._prime(prompt, sorted({c[0] for c in conts}))
        first = dict(zip(sorted({c[0] for c in conts}), firsts or []))
        n_p = len(prompt)
        out = []
        for c in conts:
            entries = [_Entry(t, n_p + i, 0, True) for i, t in enumerate(c[:-1])]
            rows = self._decode_scores(entries, {i: [c[i + 1]] for i in range(len(c) - 1)}) if len(c) > 1 else {}
            self._seq_rm(0, n_p, -1)
            out.append(_score([first[c[0]]] + [rows[i][0] for i in range(len(c) - 1)], c))
        return out

    def _loglik_naive(self, prompt: Sequence[int], cont: Sequence[int]) -> Continuation:
        self._clear()
        full = list(prompt) + list(cont)
        if len(full) > self._n_ctx:
            raise BackendError(f"prompt + continuation ({len(full)} tokens) exceed the context")
        entries = [_Entry(t, i, 0, i >= len(prompt) - 1) for i, t in enumerate(full[:-1])]
        rows = self._decode_scores(entries, {len(prompt) - 1 + i: [t] for i, t in enumerate(cont)})
        self._clear()
        return _score([rows[len(prompt) - 1 + i][0] for i in range(len(cont))], cont)

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0, top_p: float = 1.0,
                 guards: Sequence[Any] | None = None) -> list[Generation]:
        """Complete each prompt (greedy at ``temperature`` 0, else sampled from ``(seed, prompt index)``)
        until EOS, a stop string or ``max_new_tokens``; see the module docstring for how. ``guards[i]``
        (optional, an :class:`arte.constrain.TokenGuard` or None) keeps prompt ``i``'s generation inside a
        format: each sampled token is passed to its ``choose``, which returns the one to emit."""
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be >= 1, got {max_new_tokens}")
        if guards is not None and len(guards) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(guards)} guards")
        rngs = [np.random.default_rng([seed, i]) for i in range(len(prompts))]

        def choose(i: int, logits: np.ndarray) -> int:
            t = _pick(logits, temperature, top_p, rngs[i])
            if guards is not None and guards[i] is not None:   # constrained decoding
                t = guards[i].choose(t, logits, rngs[i])
            return t
        return self._decode_prompts(prompts, max_new_tokens, list(stop), choose)[0]

    def reason_loglik(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]], *,
                      cue: str, max_new_tokens: int, stop: Sequence[str] = ()) -> list[Reasoned]:
        """Greedy reasoning until ``cue``, then each continuation's log-probability after
        :func:`arte.student.reasoning_context` (see :meth:`arte.student.Student.reason_loglik`)."""
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be >= 1, got {max_new_tokens}")
        if not cue:
            raise ConfigError("cue", "must be a non-empty string")
        if len(continuations) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} lists of continuations")
        if any(len(c) == 0 for conts in continuations for c in conts) or any(not c for c in continuations):
            raise BackendError("every prompt needs at least one non-empty continuation")
        if not self.parallel:
            return reason_then_loglik(self, prompts, continuations, cue=cue, max_new_tokens=max_new_tokens,
                                      stop=stop)
        gens, scored = self._decode_prompts(prompts, max_new_tokens, list(stop), _greedy, cue, continuations)
        return [Reasoned(g, c) for g, c in zip(gens, scored or [])]

    def _decode_prompts(self, prompts: Sequence[Sequence[int]], max_new: int, stop: list[str],
                        choose: Callable[[int, np.ndarray], int], cue: str | None = None,
                        options: Sequence[Sequence[Sequence[int]]] | None = None
                        ) -> tuple[list[Generation], list[tuple[Continuation, ...]] | None]:
        """Run :func:`arte.backends.llama_parallel.decode_parallel`: all prompts together over their common
        prefix (``parallel``), or one prompt at a time over its prompt minus the last token (``parallel=False``:
        the same cells as naive), or one at a time from an empty cache (``reuse=False``)."""
        if not prompts:
            return [], ([] if options is not None else None)
        for p in prompts:
            if not p:
                raise BackendError("empty prompt")
        batches = [list(range(len(prompts)))] if self.parallel else [[i] for i in range(len(prompts))]
        gens: list[Generation] = []
        scored: list[tuple[Continuation, ...]] | None = [] if options is not None else None
        for idx in batches:
            group = [list(prompts[i]) for i in idx]
            common = _common_prefix(group) if self.reuse else 0
            if common > 0:
                self._prime(group[0][:common])
            else:
                self._clear()
            g, sc = decode_parallel(self, group, common=common, max_new=max_new, stop=stop,
                                    choose=lambda k, row, idx=idx: choose(idx[k], row), n_parallel=self.n_parallel,
                                    cue=cue, options=[options[i] for i in idx] if options is not None else None)
            gens += g
            if scored is not None and sc is not None:
                scored += sc
            if not self.reuse:
                self._clear()
        return gens, scored


def _greedy(_i: int, logits: np.ndarray) -> int:
    return int(logits.argmax())


def _score(rows: Sequence[tuple[float, bool]], cont: Sequence[int]) -> Continuation:
    """A continuation from ``(log p, is argmax)`` of each of its tokens, summed in order."""
    lp = 0.0
    greedy = True
    for x, best in rows:
        lp += x
        greedy = greedy and best
    return Continuation(lp, len(cont), greedy)


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the prefix shared by all prompts, leaving at least one token of each to evaluate."""
    common = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        common = min(common, longest_common_prefix(prompts[0], p))
    return max(common, 0)


def _pick(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise sample from softmax(logits / T) restricted to the top-p mass."""
    if temperature <= 0.0:
        return int(logits.argmax())
    x = logits.astype(np.float64) / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))
