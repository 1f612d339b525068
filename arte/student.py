"""The student protocol: what the scoring engine needs from a model runtime.

Contract: token ids in, numbers or text out. The engine knows nothing about runtimes; backends
(llama.cpp, torch, ONNX Runtime) know nothing about drafts or tasks.

Backends are expected to reuse work: ``loglik`` evaluates ``prompt`` once for all its continuations, and
keeps the evaluated prompt so that the next call with a common prefix only evaluates the new tokens
(the engine orders calls draft by draft to exploit it). ``generate`` decodes several prompts together when
it can. Results must equal evaluating every (prompt + continuation) from scratch; ``tests`` check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

__all__ = ["Continuation", "Generation", "Student", "longest_common_prefix"]


@dataclass(frozen=True)
class Continuation:
    """Log-probability of a continuation given a prompt.

    ``logprob`` is the sum over its tokens; ``is_greedy`` says whether every token was the argmax.
    """

    logprob: float
    n_tokens: int
    is_greedy: bool


@dataclass(frozen=True)
class Generation:
    """A greedy (or sampled) completion. ``stop`` is the stop string that ended it, ``"eos"`` or
    ``"length"``; ``text`` excludes the stop string."""

    text: str
    stop: str
    n_tokens: int


@runtime_checkable
class Student(Protocol):
    """A local model that scores and generates. Implementations own native resources: call ``close``."""

    name: str

    @property
    def n_ctx(self) -> int:
        """The context window, in tokens."""

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token markup is not parsed. ``bos`` prepends the model's BOS
        token if the model uses one."""

    def loglik(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[Continuation]:
        """Log-probability of each continuation after ``prompt`` (the prompt is evaluated once)."""

    def loglik_batch(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]
                     ) -> list[list[Continuation]]:
        """``loglik`` for several (prompt, continuations) requests; backends share their common prefix."""

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0) -> list[Generation]:
        """Complete each prompt: greedy at ``temperature`` 0, else sampled with ``seed``. Stops at EOS,
        at the first stop string, or after ``max_new_tokens``."""

    def close(self) -> None:
        """Free the runtime's native resources."""


def longest_common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
