"""A fake llama.cpp under the real :class:`arte.backends.llama.LlamaCppStudent`: every decoding strategy
(trie batches, continuous batching, prefix reuse, naive) runs unchanged; only the four native cache
operations and the tokenizer are replaced.

The fake KV cache is strict where llama.cpp is: each sequence's positions must stay consecutive, a cell
holds at most ``n_ctx`` tokens, and a token sees exactly the cells tagged with its sequence at positions
up to its own (within a batch too). Logits are a pure function of the token sequence a row sees, so two
strategies agree exactly when, and only when, every row saw the same tokens in the same positions.

The "model" reads the text after the last "step by step." as its own reasoning and follows a script
chosen by a hash of the text before it: reasoning of varying length, then ``<ans>{answer}</ans>``; or
babbling past any budget; or ending its turn early; or starting a new "\\nQuestion:". The answer is the
option named after "Answer key:" in the prompt, if any. Tokens: one per byte, EOS = 256, and the
tokenizer (not the model) writes ``<ans>`` as the single token 257, so a re-tokenized reasoning differs
from the generated tokens.
"""

from __future__ import annotations

import re
import zlib
from typing import Callable, Sequence

import numpy as np

from arte.backends.llama import LlamaCppStudent
from arte.backends.llama_parallel import _Entry
from arte.errors import BackendError

EOS, ANS = 256, 257
VOCAB = 258
OPENER = b"step by step."


def _text(tokens: Sequence[int]) -> bytes:
    return b"".join(b"<ans>" if t == ANS else bytes([t]) if t < 256 else b"" for t in tokens)


def script(context: bytes) -> bytes:
    """What the fake model writes after ``context`` (the text up to and including "step by step.")."""
    h = zlib.crc32(context)
    key = re.findall(rb"Answer key: (\w+)", context)
    answer = key[-1] if key else b"yes"
    words = b" hm" * (1 + h % 5)
    kind = (h >> 8) % 6
    if kind == 0:
        return words * 40                                  # never answers: runs into the budget
    if kind == 1:
        return words                                       # ends its turn (EOS) without a tag
    if kind == 2:
        return words + b"\nQuestion: and another"          # starts inventing the next question
    return words + b" so <ans>" + answer + b"</ans> more"  # answers (3 of 6)


def fake_logits(tokens: Sequence[int]) -> np.ndarray:
    """The fake model's logits after ``tokens``: the script's next byte (EOS at its end, or once off the
    script) far ahead, plus small noise that depends on every token id and its position."""
    rng = np.random.default_rng(zlib.crc32(np.asarray(tokens, dtype=np.int64).tobytes()))
    x = rng.normal(0.0, 0.5, VOCAB).astype(np.float32)
    text = _text(tokens)
    cut = text.rfind(OPENER)
    nxt = EOS
    if cut >= 0:
        ctx, done = text[:cut + len(OPENER)], text[cut + len(OPENER):]
        plan = script(ctx)
        if plan.startswith(done) and len(done) < len(plan):
            nxt = plan[len(done)]
    x[nxt] += 8.0
    return x


class FakeLlama(LlamaCppStudent):
    """:class:`LlamaCppStudent` on the fake cache and model above (same constructor options)."""

    def __init__(self, *, n_ctx: int = 4096, n_batch: int = 64, n_parallel: int = 8, reuse: bool = True,
                 parallel: bool = True, slots: int = 64) -> None:
        self._slots = min(slots, n_batch - 1)
        self.name = "fake-llama"
        self.reuse = reuse
        self.parallel = parallel and reuse
        self.n_parallel = n_parallel if self.parallel else 1
        self.n_vocab = VOCAB
        self._n_ctx = n_ctx
        self._n_batch = n_batch
        self._add_bos, self._bos = False, -1
        self._seq0: list[int] = []
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self.tokens_evaluated = 0
        self.decode_calls = 0
        self.cells: dict[int, tuple[int, int, set[int]]] = {}   # cell -> (token, pos, sequences)
        self.max_cells = 0
        self.max_seq = 0

    def close(self) -> None:
        self.cells = {}

    def tokenize(self, text: str, *, bos: bool = False, special: bool = False) -> list[int]:
        out: list[int] = []
        for k, part in enumerate(text.encode("utf-8").split(b"<ans>")):
            out += ([ANS] if k else []) + list(part)
        return out

    def piece(self, token: int) -> bytes:
        return _text([token])

    def is_eog(self, token: int) -> bool:
        return token == EOS

    # ---- the cache --------------------------------------------------------------------------------

    def _positions(self, seq: int) -> list[int]:
        return sorted(pos for _, pos, seqs in self.cells.values() if seq in seqs)

    def _view(self, seq: int, upto: int) -> list[int]:
        seen = sorted((pos, tok) for tok, pos, seqs in self.cells.values() if seq in seqs and pos <= upto)
        assert [p for p, _ in seen] == list(range(upto + 1)), f"sequence {seq} sees positions {[p for p, _ in seen]}"
        return [t for _, t in seen]

    def _decode(self, entries: Sequence[_Entry], on_row: Callable[[int, np.ndarray], None]) -> None:
        for start in range(0, len(entries), self._n_batch):
            chunk = entries[start:start + self._n_batch]
            placed = []
            for e in chunk:
                seqs = {e.seq, *e.also}
                for s in seqs:
                    assert 0 <= s <= self._slots, f"sequence id {s} out of range"
                    self.max_seq = max(self.max_seq, s)
                    mine = self._positions(s) + [p for p, ss in placed if s in ss]
                    assert e.pos == (max(mine) + 1 if mine else 0), f"sequence {s}: position {e.pos} after {mine}"
                placed.append((e.pos, seqs))
                if len(self.cells) >= self._n_ctx:
                    raise BackendError(f"llama_decode failed with status 1 (no room in the KV cache of {self._n_ctx})")
                cell = next(i for i in range(self._n_ctx) if i not in self.cells)
                self.cells[cell] = (e.token, e.pos, seqs)
            self.max_cells = max(self.max_cells, len(self.cells))
            self.decode_calls += 1
            self.tokens_evaluated += len(chunk)
            for i, e in enumerate(chunk):
                if e.logits:
                    views = [self._view(s, e.pos) for s in (e.seq, *e.also)]
                    assert all(v == views[0] for v in views), "a shared token sees different histories"
                    on_row(start + i, fake_logits(views[0]))

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        lo, hi = (p0 if p0 >= 0 else 0), (p1 if p1 >= 0 else 1 << 30)
        for cell, (tok, pos, seqs) in list(self.cells.items()):
            if seq in seqs and lo <= pos < hi:
                seqs.discard(seq)
                if not seqs:
                    del self.cells[cell]

    def _seq_cp(self, src: int, dst: int) -> None:
        for _, _, seqs in self.cells.values():
            if src in seqs:
                seqs.add(dst)

    def _clear(self) -> None:
        self.cells = {}
        self._seq0 = []

    def held_sequences(self) -> set[int]:
        """Sequences that still hold cells (0 is the shared prefix)."""
        return set().union(*(seqs for _, _, seqs in self.cells.values())) if self.cells else set()
