"""llama.cpp student (GGUF), on llama-cpp-python's raw bindings.

Contract: implements :class:`arte.student.Student`. It owns one native model, one context and one batch
(``close()`` frees them) and never evaluates a token twice when it can reuse it:

* Sequence 0 holds the last evaluated prompt. A new prompt evaluates only the tokens after its longest
  common prefix with it, so a draft's demonstration prefix is evaluated once for all its items.
* ``loglik_batch`` (``parallel=True``, the default) evaluates the requests' common prefix once, then all
  the rest — every item and every option of a draft — as one token trie: shared tokens are decoded once
  and tagged with every sequence that passes through them (a unified KV cache; ``llama_memory_seq_cp``
  tags cells, it copies nothing), with logits only where a continuation token is predicted.
* ``generate`` evaluates the prompts' common prefix once and decodes up to ``n_parallel`` sequences in
  one batch per step.

Three evaluation strategies, one code path each:

* ``reuse=False``: every (prompt + continuation) and every prompt from an empty cache, one at a time —
  the naive baseline that tests and benchmarks compare against;
* ``parallel=False``: prefix reuse, one sequence at a time. Every token sits in the same KV cell as in
  naive evaluation, so results are **bit-identical** to naive;
* ``parallel=True`` (default): the trie / parallel decoding above. Other sequences' cells now sit between
  a sequence's own cells; attention sums then round differently in the last bits, and the 8-bit
  activation quantization of Q4 weights amplifies that to a few hundredths of a nat (the same noise
  floor as any other change of input, RUNTIME-NOTES §7b). Decisions agree with naive on nearly every
  item (measured by ``tests/slow`` and ``benchmarks/scoring.py``).

Flash attention is off by default: on the CPU it makes logits depend on how tokens are split into
batches (up to 0.2 nats on the default model), which even naive evaluation cannot control.

Why raw bindings rather than ``llama_cpp.Llama``: ``Llama`` keeps one sequence and either one logits row
or all of them (``logits_all`` costs n_ctx × vocab floats and ~13 % of prompt speed); selective logits
and shared-prefix parallel sequences need the batch API.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from arte.errors import BackendError, ConfigError, ModelError
from arte.student import Continuation, Generation, longest_common_prefix

__all__ = ["LlamaCppStudent", "log_softmax_at"]

log = logging.getLogger(__name__)

# Parallel sequences per context (sequence 0 holds the shared prefix). llama.cpp allows up to 256.
_SLOTS = 64


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    """log p(token) under ``logits`` (float64 log-sum-exp)."""
    x = logits.astype(np.float64)
    m = x.max()
    return float(x[token] - m - np.log(np.exp(x - m).sum()))


@dataclass
class _Entry:
    token: int
    pos: int
    seq: int
    logits: bool
    also: tuple[int, ...] = ()   # further sequences this token belongs to (shared trie nodes)


class LlamaCppStudent:
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

    def __enter__(self) -> "LlamaCppStudent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        """The bytes of one token (special tokens render as empty)."""
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        """The vocabulary text of a token, special tokens included (e.g. ``<|im_start|>``)."""
        raw = self._ll.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self._vocab, token))

    # ---- decoding ---------------------------------------------------------------------------------

    def _decode(self, entries: Sequence[_Entry]) -> dict[int, np.ndarray]:
        """Decode entries in batches of ``n_batch``; returns {entry index: logits row} for the entries
        that asked for logits."""
        ll, b = self._ll, self._batch
        out: dict[int, np.ndarray] = {}
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
                    out[start + i] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
        return out

    def _clear(self) -> None:
        self._ll.llama_memory_clear(self._mem, True)
        self._seq0 = []

    def _prime(self, prompt: Sequence[int], logits: bool = True) -> np.ndarray | None:
        """Make sequence 0 hold ``prompt`` (evaluating only what differs from what it holds) and return
        the logits after its last token (when ``logits``)."""
        if not prompt:
            raise BackendError("empty prompt")
        if len(prompt) >= self._n_ctx:
            raise BackendError(f"prompt of {len(prompt)} tokens does not fit the context of {self._n_ctx}")
        if not self.reuse:
            self._clear()
        keep = longest_common_prefix(self._seq0, prompt)
        if logits:   # the last token is re-evaluated when its logits are needed
            keep = min(keep, len(prompt) - 1)
        self._ll.llama_memory_seq_rm(self._mem, 0, keep, -1)
        self._seq0 = list(prompt)
        todo = [_Entry(t, keep + i, 0, False) for i, t in enumerate(prompt[keep:])]
        if not todo:
            return None
        todo[-1].logits = logits
        try:
            return self._decode(todo).get(len(todo) - 1)
        except BackendError:
            self._clear()
            raise

    def _drop_parallel(self, seqs: Sequence[int]) -> None:
        for s in seqs:
            self._ll.llama_memory_seq_rm(self._mem, s, -1, -1)

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
            self._prime(group[0][0][:common], logits=False)
        else:
            self._clear()
        nodes: dict[tuple[int, int], int] = {}     # (parent node, token) -> entry index
        entries: list[_Entry] = []
        seqs: list[list[int]] = []                   # entry index -> sequences through it
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
                    idx.append(node)
                    parent = node
                paths.append((r, k, idx[need_from:]))
        for i, e in enumerate(entries):
            e.seq, e.also = seqs[i][0], tuple(seqs[i][1:])
        n_seq = len(paths)
        if common > 0:
            for s in range(1, n_seq + 1):
                self._ll.llama_memory_seq_cp(self._mem, 0, s, -1, -1)
        try:
            rows = self._decode(entries)
        finally:
            self._drop_parallel(range(1, n_seq + 1))
        results: list[list[Continuation]] = [[None] * len(c) for _, c in group]  # type: ignore[list-item]
        for r, k, idx in paths:
            results[r][k] = _score([rows[i] for i in idx], group[r][1][k])
        return results

    def _loglik_sequential(self, prompt: Sequence[int], conts: Sequence[Sequence[int]]) -> list[Continuation]:
        first = self._prime(prompt)
        n_p = len(prompt)
        out = []
        for c in conts:
            rows = self._decode([_Entry(t, n_p + i, 0, True) for i, t in enumerate(c[:-1])]) if len(c) > 1 else {}
            self._ll.llama_memory_seq_rm(self._mem, 0, n_p, -1)
            out.append(_score([first] + [rows[i] for i in range(len(c) - 1)], c))
        return out

    def _loglik_naive(self, prompt: Sequence[int], cont: Sequence[int]) -> Continuation:
        self._clear()
        full = list(prompt) + list(cont)
        if len(full) > self._n_ctx:
            raise BackendError(f"prompt + continuation ({len(full)} tokens) exceed the context")
        entries = [_Entry(t, i, 0, i >= len(prompt) - 1) for i, t in enumerate(full[:-1])]
        rows = self._decode(entries)
        self._clear()
        return _score([rows[len(prompt) - 1 + i] for i in range(len(cont))], cont)

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0, top_p: float = 1.0,
                 guards: Sequence[Any] | None = None) -> list[Generation]:
        """``guards[i]`` (optional, an :class:`arte.constrain.TokenGuard` or None) keeps prompt ``i``'s
        generation inside a format: each sampled token is passed to its ``choose``, which returns the one
        to emit."""
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be >= 1, got {max_new_tokens}")
        out: list[Generation] = []
        for start in range(0, len(prompts), self.n_parallel):
            wave = [list(p) for p in prompts[start:start + self.n_parallel]]
            rngs = [np.random.default_rng([seed, start + i]) for i in range(len(wave))]
            wave_guards = list(guards[start:start + len(wave)]) if guards is not None else None
            out += self._generate_wave(wave, max_new_tokens, list(stop), temperature, top_p, rngs, wave_guards)
        return out

    def _generate_wave(self, wave: list[list[int]], max_new: int, stop: list[str], temperature: float,
                       top_p: float, rngs: list[np.random.Generator],
                       guards: list[Any] | None = None) -> list[Generation]:
        common = _common_prefix(wave)
        needed = common + sum(len(p) - common + max_new for p in wave)
        if needed > self._n_ctx:
            raise BackendError(f"{len(wave)} prompts with up to {max_new} new tokens need {needed} cache "
                               f"cells, more than the context of {self._n_ctx}: raise n_ctx or lower n_parallel")
        if common > 0:
            self._prime(wave[0][:common], logits=False)
        else:
            self._clear()
        seqs = list(range(1, len(wave) + 1))
        entries: list[_Entry] = []
        last: list[int] = []
        for s, p in zip(seqs, wave):
            if common > 0:
                self._ll.llama_memory_seq_cp(self._mem, 0, s, -1, -1)
            entries += [_Entry(t, common + i, s, False) for i, t in enumerate(p[common:])]
            entries[-1].logits = True
            last.append(len(entries) - 1)
        rows = self._decode(entries)
        logits = {s: rows[i] for s, i in zip(seqs, last)}
        pos = {s: len(p) for s, p in zip(seqs, wave)}
        toks: dict[int, list[int]] = {s: [] for s in seqs}
        text: dict[int, bytes] = {s: b"" for s in seqs}
        done: dict[int, Generation] = {}
        try:
            while len(done) < len(seqs):
                step: list[_Entry] = []
                for s in seqs:
                    if s in done:
                        continue
                    t = _pick(logits[s], temperature, top_p, rngs[s - 1])
                    if guards is not None and guards[s - 1] is not None:   # constrained decoding
                        t = guards[s - 1].choose(t, logits[s], rngs[s - 1])
                    if self.is_eog(t):
                        done[s] = Generation(text[s].decode("utf-8", "replace"), "eos", len(toks[s]))
                        continue
                    toks[s].append(t)
                    text[s] += self.piece(t)
                    decoded = text[s].decode("utf-8", "ignore")
                    hit = _first_stop(decoded, stop)
                    if hit is not None:
                        done[s] = Generation(decoded[:hit[0]], hit[1], len(toks[s]))
                    elif len(toks[s]) >= max_new:
                        done[s] = Generation(text[s].decode("utf-8", "replace"), "length", len(toks[s]))
                    else:
                        step.append(_Entry(t, pos[s], s, True))
                        pos[s] += 1
                if step:
                    rows = self._decode(step)
                    for i, e in enumerate(step):
                        logits[e.seq] = rows[i]
        finally:
            self._drop_parallel(seqs)
            if not self.reuse:
                self._clear()
        return [done[s] for s in seqs]


def _score(dists: Sequence[np.ndarray], cont: Sequence[int]) -> Continuation:
    lp = 0.0
    greedy = True
    for row, t in zip(dists, cont):
        lp += log_softmax_at(row, t)
        greedy = greedy and int(row.argmax()) == t
    return Continuation(lp, len(cont), greedy)


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the prefix shared by all prompts, leaving at least one token of each to evaluate."""
    common = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        common = min(common, longest_common_prefix(prompts[0], p))
    return max(common, 0)


def _first_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for s in stop:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


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
