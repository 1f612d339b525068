"""Parallel decoding for the llama.cpp student: continuous batching over a shared prefix.

Contract: :func:`decode_parallel` completes many prompts on one
:class:`~arte.backends.llama.LlamaCppStudent` whose sequence 0 already holds the prompts' first ``common``
tokens. Each prompt gets its own KV sequence (a tag on the shared prefix's cells, ``llama_memory_seq_cp``
copies nothing), and up to ``n_parallel`` sequences decode together, one ``llama_decode`` per step: when
one stops, the next prompt takes its place in the following step, its prompt tokens in the same batch as
the others' next tokens, so the batch stays full until the queue is empty. Each sequence stops at its own
stop string (searched in its new bytes only), EOS or budget. Logits are read in place (a view of
llama.cpp's buffer, valid until the next decode): a greedy step is one ``argmax``, with no copy.

With ``options`` (the ``cot-choice`` mode, :meth:`arte.student.Student.reason_loglik`), a sequence that
stops keeps its cells: the context ``tokenize(reasoning + cue)`` is compared with what it generated, the
cells after the common part are dropped, and the rest of the context plus the item's options join the
next step's batch as a token trie hanging off the sequence (shared tokens decoded once, one extra
sequence per option after the first). Logits are computed only where an option token is predicted.

The caller owns sequence 0; every other sequence is freed before this returns, also on error.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from arte.errors import BackendError
from arte.student import Continuation, Generation, longest_common_prefix, reasoning_context

if TYPE_CHECKING:
    from arte.backends.llama import LlamaCppStudent

__all__ = ["decode_parallel", "row_logprobs"]


@dataclass
class _Entry:
    """One token of a ``llama_decode`` batch."""

    token: int
    pos: int
    seq: int
    logits: bool
    also: tuple[int, ...] = ()   # further sequences this token belongs to (shared trie nodes)

Choose = Callable[[int, np.ndarray], int]   # (prompt index, logits row) -> the next token


def row_logprobs(logits: np.ndarray, targets: Sequence[int]) -> list[tuple[float, bool]]:
    """``(log p(t), t is the argmax)`` for each target token under one logits row (float64 log-sum-exp)."""
    x = logits.astype(np.float64)
    m = x.max()
    log_z = np.log(np.exp(x - m).sum())
    best = int(logits.argmax())
    return [(float(x[t] - m - log_z), best == t) for t in targets]


@dataclass
class _Live:
    """One prompt's sequence while it generates."""

    index: int
    seq: int
    n_prompt: int
    cells: int                 # cells reserved for it (see decode_parallel)
    toks: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    chosen: int | None = None  # the token picked from this step's logits


@dataclass
class _Options:
    """One finished item whose options are scored after its reasoning."""

    live: _Live
    tail: list[int]            # context tokens still to decode, from position ``pos``
    pos: int
    conts: Sequence[Sequence[int]]
    seqs: list[int] = field(default_factory=list)
    lp: list[list[float]] = field(default_factory=list)
    greedy: list[list[bool]] = field(default_factory=list)


def decode_parallel(eng: "LlamaCppStudent", prompts: Sequence[Sequence[int]], *, common: int, max_new: int,
                    stop: Sequence[str], choose: Choose, n_parallel: int, cue: str | None = None,
                    options: Sequence[Sequence[Sequence[int]]] | None = None
                    ) -> tuple[list[Generation], list[tuple[Continuation, ...]] | None]:
    """Complete ``prompts`` (see the module docstring). Returns the generations and, with ``options``,
    the continuations' log-probabilities per prompt (after ``reasoning_context(reasoning, cue)``)."""
    stops = [(s, s.encode("utf-8")) for s in ([cue] if options is not None and cue else []) + list(stop)]
    overlap = max((len(b) for _, b in stops), default=1) - 1
    cue_room = len(eng.tokenize(cue)) + 2 if options is not None and cue else 0

    def reserve(i: int) -> int:
        # Cells a sequence may hold: its prompt after the prefix and its budget; in cot-choice also a
        # re-tokenized reasoning (bounded by the budget), the cue and every option's tokens.
        n = len(prompts[i]) - common + max_new
        if options is not None:
            n += max_new + cue_room + sum(len(c) for c in options[i])
        return n

    for i in range(len(prompts)):
        if common + reserve(i) > eng.n_ctx:
            raise BackendError(f"a prompt of {len(prompts[i])} tokens with up to {max_new} new tokens (and its "
                               f"options) needs {common + reserve(i)} cache cells, more than the context of "
                               f"{eng.n_ctx}: raise n_ctx")
    n_opts = max((len(c) for c in options), default=1) if options is not None else 1
    # Sequences that generate, or wait for their options, at once: leave ids for one item's options.
    width = max(1, min(n_parallel, eng._slots - (n_opts - 1)))
    free = list(range(eng._slots, 0, -1))
    queue = deque(range(len(prompts)))
    live: list[_Live] = []
    waiting: list[_Options] = []
    cells = common
    gens: list[Generation | None] = [None] * len(prompts)
    scored: list[tuple[Continuation, ...] | None] = [None] * len(prompts)
    held: set[int] = set()

    def release(seqs: Sequence[int], n_cells: int) -> None:
        nonlocal cells
        for s in seqs:
            eng._seq_rm(s, -1, -1)
            held.discard(s)
            free.append(s)
        cells -= n_cells

    def finish(st: _Live, how: str, end: int, in_cache: int) -> None:
        text = bytes(st.text[:end]).decode("utf-8", "replace")
        gen = gens[st.index] = Generation(text, how, len(st.toks))
        if options is None:
            release([st.seq], st.cells)
            return
        tail = reasoning_context(eng, gen, cue or "")
        keep = min(longest_common_prefix(st.toks[:in_cache], tail), len(tail) - 1)
        eng._seq_rm(st.seq, st.n_prompt + keep, -1)
        waiting.append(_Options(st, tail[keep:], st.n_prompt + keep, options[st.index]))

    try:
        while queue or live or waiting:
            entries: list = []
            on_row: dict[int, Callable[[np.ndarray], None]] = {}
            batch_options: list[_Options] = []
            # 1. The options of items that finished reasoning, while sequence ids last.
            while waiting and len(free) >= len(waiting[0].conts) - 1:
                job = waiting.pop(0)
                _add_option_trie(eng, job, free, held, entries, on_row)
                batch_options.append(job)
            # 2. The next token of every generating sequence.
            for st in live:
                on_row[len(entries)] = _picker(st, choose)
                entries.append(_Entry(st.toks[-1], st.n_prompt + len(st.toks) - 1, st.seq, True))
            # 3. New prompts, while sequences and cache cells last.
            while queue and len(held) < width and cells + reserve(queue[0]) <= eng.n_ctx:
                i = queue.popleft()
                s = free.pop()
                held.add(s)
                st = _Live(i, s, len(prompts[i]), reserve(i))
                cells += st.cells
                if common > 0:
                    eng._seq_cp(0, s)
                for d, t in enumerate(prompts[i][common:]):
                    entries.append(_Entry(t, common + d, s, False))
                entries[-1].logits = True
                on_row[len(entries) - 1] = _picker(st, choose)
                live.append(st)
            if not entries:   # pragma: no cover - cannot happen: reserve() fits one sequence alone
                raise BackendError("parallel decoding made no progress")
            eng._decode(entries, lambda k, row: on_row[k](row))
            for job in batch_options:
                scored[job.live.index] = tuple(Continuation(float(sum(lp)), len(c), all(g))
                                               for lp, g, c in zip(job.lp, job.greedy, job.conts))
                release([job.live.seq, *job.seqs], job.live.cells)
            still: list[_Live] = []
            for st in live:
                t, st.chosen = st.chosen, None
                assert t is not None
                if eng.is_eog(t):
                    finish(st, "eos", len(st.text), len(st.toks))
                    continue
                st.toks.append(t)
                start = max(0, len(st.text) - overlap)
                st.text += eng.piece(t)
                hit = _first_stop(st.text, stops, start)
                if hit is not None:
                    finish(st, hit[1], hit[0], len(st.toks) - 1)
                elif len(st.toks) >= max_new:
                    finish(st, "length", len(st.text), len(st.toks) - 1)
                else:
                    still.append(st)
            live = still
    finally:
        for s in list(held):
            eng._seq_rm(s, -1, -1)
    return [g for g in gens if g is not None], (list(scored) if options is not None else None)  # type: ignore[arg-type]


def _picker(st: _Live, choose: Choose) -> Callable[[np.ndarray], None]:
    def pick(row: np.ndarray) -> None:
        st.chosen = choose(st.index, row)
    return pick


def _add_option_trie(eng: "LlamaCppStudent", job: _Options, free: list[int], held: set[int], entries: list,
                     on_row: dict[int, Callable[[np.ndarray], None]]) -> None:
    """Queue the item's remaining context and its options as a trie over its sequence (see the module
    docstring); rows fill ``job.lp`` and ``job.greedy``."""
    base = job.live.seq
    job.seqs = [free.pop() for _ in job.conts[1:]]
    held.update(job.seqs)
    for s in job.seqs:
        eng._seq_cp(base, s)
    seq_of = [base, *job.seqs]
    job.lp = [[0.0] * len(c) for c in job.conts]
    job.greedy = [[False] * len(c) for c in job.conts]
    nodes: dict[tuple[int, int], int] = {}
    tags: dict[int, list[int]] = {}
    preds: dict[int, list[tuple[int, int, int]]] = {}   # entry -> (option, token index, target)
    for k, cont in enumerate(job.conts):
        toks = list(job.tail) + list(cont[:-1])
        need_from = len(job.tail) - 1
        parent = -1
        for d, t in enumerate(toks):
            node = nodes.get((parent, t))
            if node is None:
                node = nodes[(parent, t)] = len(entries)
                entries.append(_Entry(t, job.pos + d, seq_of[k], False))
                tags[node] = []
            tags[node].append(seq_of[k])
            if d >= need_from:
                entries[node].logits = True
                preds.setdefault(node, []).append((k, d - need_from, cont[d - need_from]))
            parent = node
    for node, seqs in tags.items():
        entries[node].seq, entries[node].also = seqs[0], tuple(seqs[1:])
    for node, ps in preds.items():
        def score(row: np.ndarray, ps: list[tuple[int, int, int]] = ps) -> None:
            for (k, i, _t), (lp, best) in zip(ps, row_logprobs(row, [t for _, _, t in ps])):
                job.lp[k][i], job.greedy[k][i] = lp, best
        on_row[node] = score


def _first_stop(text: bytearray, stops: Sequence[tuple[str, bytes]], start: int) -> tuple[int, str] | None:
    """The earliest stop string in ``text[start:]``: (its byte offset, the string)."""
    best: tuple[int, str] | None = None
    for s, b in stops:
        i = text.find(b, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best
