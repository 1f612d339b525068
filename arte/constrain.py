"""Constrained decoding for local teachers: keep each generation inside a :class:`arte.grammar.Format`.

Contract: a backend that samples token by token makes one :class:`TokenGuard` per constrained
generation and, after sampling each token as usual, calls ``token = guard.choose(sampled, logits, rng)``
and emits what it returns. The guard consults the format only when it has to (as llama.cpp's sampler
does with grammars): the sampled token's bytes are fed to the format's byte automaton
(:class:`arte.grammar.Matcher`), and

* a token that stays inside the format is kept (the common case: one automaton step per byte);
* a token that would leave it is replaced by one drawn from the valid tokens (softmax(logits / T) over
  them, restricted to the ``top_p`` mass; the best one at T = 0). Sampling, then resampling among valid
  tokens when the sample is invalid, draws from the model's distribution renormalized to the valid
  tokens. The candidates are the tokens whose first byte the format allows; when there are more than
  ``pool`` (free text, where most tokens are valid) only the ``top_k`` best of them are tried, and if none
  of those is valid, the best valid token of the whole vocabulary is taken;
* the end of generation is allowed only where the format may end; once the format is complete the end
  is emitted.

**Finishing.** When the model wants to stop early, or its remaining tokens fall to
:meth:`arte.grammar.Format.finish_bytes` (an upper bound of what finishing needs: a token has at least one
byte), the guard switches to *finishing*: free text and optional parts close, and what the format still
requires is written (e.g. ``<ans>``, then the option the model scores highest, then ``</ans>``).

Counts (added to a caller's dict, see :data:`COUNT_KEYS`): ``generations`` constrained, ``tokens``
chosen, ``replaced`` (tokens the constraint changed), ``generations_acted`` (generations with at least
one), ``finished_early`` (the model wanted to stop before the format was complete),
``finished_at_budget`` (finishing started by the token budget), ``incomplete`` (the budget ran out
outside the format anyway; the reply is then rejected downstream with the usual reasons).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from arte.errors import ConfigError
from arte.grammar import Format, Kernel, Matcher

__all__ = ["Vocabulary", "TokenGuard", "COUNT_KEYS", "add_counts", "check_formats", "sample"]

COUNT_KEYS = ("generations", "tokens", "replaced", "generations_acted", "finished_early", "finished_at_budget",
              "incomplete")


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator | None) -> int:
    """Index of a draw from softmax(logits / T) restricted to the ``top_p`` mass (the argmax at T = 0 or
    without ``rng``)."""
    x = np.asarray(logits, dtype=np.float64)
    if temperature <= 0.0 or rng is None or x.size == 1:
        return int(x.argmax())
    order = np.argsort(-x, kind="stable")
    z = x[order] / temperature
    p = np.exp(z - z[0])
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1
        p = p[:keep] / p[:keep].sum()
    return int(order[int(rng.choice(len(p), p=p))])


def add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    """Add ``counts`` into ``into`` key by key."""
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


def check_formats(formats: Sequence[Format | None] | None, n: int) -> list[Format | None]:
    """Validate a ``formats`` argument of :meth:`arte.teacher.Teacher.chat` (one per conversation)."""
    if formats is None:
        return [None] * n
    out = list(formats)
    if len(out) != n:
        raise ConfigError("formats", f"expected one format (or None) per conversation: {n}, got {len(out)}")
    for i, f in enumerate(out):
        if f is not None and not isinstance(f, Format):
            raise ConfigError(f"formats[{i}]", f"expected an arte.grammar.Format or None, got {type(f).__name__}")
    return out


@dataclass
class Vocabulary:
    """What the guard needs of a tokenizer: each token's bytes (``b""`` for control tokens), the
    end-of-generation ids, and the one to emit when a format is complete."""

    pieces: list[bytes]
    eog: frozenset[int]
    eos: int
    _by_first: dict[int, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.eos < len(self.pieces) or self.eos not in self.eog:
            raise ConfigError("eos", f"must be one of the end-of-generation ids, got {self.eos}")

    def by_first_byte(self, byte: int) -> np.ndarray:
        """Ids of the (non-control) tokens whose bytes start with ``byte``."""
        if self._by_first is None:
            groups: dict[int, list[int]] = {}
            for t, p in enumerate(self.pieces):
                if p and t not in self.eog:
                    groups.setdefault(p[0], []).append(t)
            self._by_first = {b: np.asarray(ids, dtype=np.int64) for b, ids in groups.items()}
        return self._by_first.get(byte, np.zeros(0, dtype=np.int64))


class TokenGuard:
    """Keeps one generation inside ``fmt`` (see the module docstring)."""

    def __init__(self, fmt: Format, vocab: Vocabulary, *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, counts: dict[str, int] | None = None, top_k: int = 64,
                 pool: int = 1024) -> None:
        self.format = fmt
        self.matcher: Matcher = fmt.matcher()
        self.vocab = vocab
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.pool = pool
        self.reserve = fmt.finish_bytes()
        self.counts = counts if counts is not None else {}
        self.kernel: Kernel = self.matcher.start
        self.finishing = False
        self.done = False
        self.n = 0
        self._acted = False
        add_counts(self.counts, {"generations": 1})

    # ---- state --------------------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _finish(self, why: str) -> None:
        if not self.finishing:
            self.finishing = True
            self._count(why)

    def accepting(self) -> bool:
        return self.matcher.accepting(self.kernel, self.finishing)

    def _after(self, token: int) -> Kernel:
        piece = self.vocab.pieces[token]
        if not piece:
            return frozenset()
        return self.matcher.advance(self.kernel, piece, self.finishing)

    def _valid(self, token: int, accepting: bool) -> bool:
        if token in self.vocab.eog:
            return accepting
        return bool(self._after(token))

    # ---- choosing -----------------------------------------------------------------------------------

    def choose(self, sampled: int, logits: np.ndarray, rng: np.random.Generator | None = None) -> int:
        """The token to emit instead of ``sampled`` (often ``sampled`` itself); ``logits`` are the raw
        next-token scores it was sampled from."""
        if self.done:
            return self.vocab.eos
        if self.max_new_tokens - self.n <= self.reserve:
            self._finish("finished_at_budget")
        accepting = self.accepting()
        if accepting and not self.matcher.next_bytes(self.kernel, self.finishing):
            token = self.vocab.eos                       # the format is complete: end here
        elif sampled in self.vocab.eog:
            if accepting:
                token = sampled
            else:
                self._finish("finished_early")
                token = self._resample(logits, rng, False)
        elif self._valid(sampled, accepting):
            token = sampled
        else:
            token = self._resample(logits, rng, accepting)
        if token != sampled:
            self._count("replaced")
            if not self._acted:
                self._acted = True
                self._count("generations_acted")
        self._count("tokens")
        self.n += 1
        if token in self.vocab.eog:
            self.done = True
        else:
            self.kernel = self._after(token)
            if self.n >= self.max_new_tokens and not self.accepting():
                self._count("incomplete")
        return token

    def _resample(self, logits: np.ndarray, rng: np.random.Generator | None, accepting: bool) -> int:
        """A valid token instead of an invalid sample: drawn from the valid candidates (see the module
        docstring), the best one at T = 0."""
        x = np.asarray(logits, dtype=np.float64)
        cands = self._candidates(accepting)
        if cands.size > self.pool:              # free text: most tokens are valid, the best ones suffice
            cands = cands[np.argpartition(-x[cands], self.top_k - 1)[:self.top_k]]
        cands = cands[np.argsort(-x[cands], kind="stable")]
        if self.temperature <= 0.0 or rng is None:
            best = self._first_valid(cands, accepting)
            return best if best is not None else self._best_valid(x, accepting)
        valid = [int(t) for t in cands if self._valid(int(t), accepting)]
        if valid:
            return valid[sample(x[valid], self.temperature, self.top_p, rng)]
        return self._best_valid(x, accepting)

    def _candidates(self, accepting: bool) -> np.ndarray:
        """Tokens whose first byte the format allows next (and the end tokens where it may end)."""
        groups = [self.vocab.by_first_byte(b) for b in self.matcher.next_bytes(self.kernel, self.finishing)]
        if accepting:
            groups.append(np.asarray(sorted(self.vocab.eog), dtype=np.int64))
        return np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)

    def _first_valid(self, ordered: np.ndarray, accepting: bool) -> int | None:
        for t in ordered:
            if self._valid(int(t), accepting):
                return int(t)
        return None

    def _best_valid(self, x: np.ndarray, accepting: bool) -> int:
        """The best-scoring valid token of the whole vocabulary."""
        cands = self._candidates(accepting)
        best = self._first_valid(cands[np.argsort(-x[cands], kind="stable")], accepting)
        if best is not None:
            return best
        # No token continues the format (a vocabulary without some needed byte): end, and let the reply
        # be rejected downstream.
        self._count("incomplete")
        return self.vocab.eos
