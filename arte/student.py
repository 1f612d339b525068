"""The student protocol: what the scoring engine needs from a model runtime.

Contract: token ids in, numbers or text out. The engine knows nothing about runtimes; backends
(llama.cpp, torch, ONNX Runtime) know nothing about drafts or tasks.

Backends are expected to reuse work: ``loglik`` evaluates ``prompt`` once for all its continuations, and
keeps the evaluated prompt so that the next call with a common prefix only evaluates the new tokens
(the engine orders calls draft by draft to exploit it). ``generate`` decodes several prompts together when
it can. Results must equal evaluating every (prompt + continuation) from scratch; ``tests`` check it.

``reason_loglik`` is chain-of-thought followed by a choice (the ``cot-choice`` scoring mode): each prompt
is continued greedily until the ``cue`` (``<ans>``), then every continuation (``{option}</ans>``) is scored
after ``prompt + tokenize(reasoning + cue)``, where the reasoning is the generated text before the cue (or
before another stop string, the end of the turn, or the token budget: then the cue is appended). The
context is defined on text, not on the generated tokens, so every backend, and every way of decoding,
scores the same token sequence. :func:`reason_then_loglik` implements it with ``generate`` and
``loglik_batch``; a backend may do better (llama.cpp scores the options in the generated sequences'
own KV cells).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["Closes", "Continuation", "Generation", "OnePromptAtATime", "Reasoned", "Student", "longest_common_prefix", "reason_then_loglik",
           "reasoning_context"]


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


@dataclass(frozen=True)
class Reasoned:
    """The reasoning generated for one prompt and the log-probability of each continuation after it
    (see :meth:`Student.reason_loglik`). ``generation.stop`` is the cue when the student wrote it."""

    generation: Generation
    continuations: tuple[Continuation, ...]


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

    def reason_loglik(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]], *,
                      cue: str, max_new_tokens: int, stop: Sequence[str] = ()) -> list[Reasoned]:
        """For each prompt, greedy reasoning until ``cue`` (or a ``stop`` string, EOS, ``max_new_tokens``),
        then the log-probability of each of its continuations after
        :func:`reasoning_context` (see the module docstring)."""

    def close(self) -> None:
        """Free the runtime's native resources."""


def longest_common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reasoning_context(student: Student, generation: Generation, cue: str) -> list[int]:
    """The tokens that follow the prompt before a continuation is scored in ``reason_loglik``: the
    reasoning text (``generation.text``: what was generated before the cue or another stop string, or
    everything at EOS or at the budget) followed by the cue, tokenized together."""
    return student.tokenize(generation.text + cue)


def reason_then_loglik(student: Student, prompts: Sequence[Sequence[int]],
                       continuations: Sequence[Sequence[Sequence[int]]], *, cue: str, max_new_tokens: int,
                       stop: Sequence[str] = ()) -> list[Reasoned]:
    """``reason_loglik`` from the student's ``generate`` and ``loglik_batch`` (two passes: the reasoning,
    then every prompt + reasoning + cue evaluated again for its continuations)."""
    if len(continuations) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} lists of continuations")
    gens = student.generate(prompts, max_new_tokens=max_new_tokens, stop=(cue, *stop))
    requests = [(list(p) + reasoning_context(student, g, cue), c) for p, g, c in zip(prompts, gens, continuations)]
    return [Reasoned(g, tuple(r)) for g, r in zip(gens, student.loglik_batch(requests))]


class Closes:
    """``with model:`` closes it (students and teachers that hold a runtime)."""

    def close(self) -> None:  # pragma: no cover - each runtime's own
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OnePromptAtATime:
    """``loglik_batch`` and ``reason_loglik`` for a student that evaluates one prompt at a time (torch, ONNX):
    the batch is a loop over ``loglik``, the reasoning :func:`reason_then_loglik`."""

    def loglik_batch(self, requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]
                     ) -> list[list[Continuation]]:
        return [self.loglik(p, c) for p, c in requests]  # type: ignore[attr-defined]

    def reason_loglik(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]], *,
                      cue: str, max_new_tokens: int, stop: Sequence[str] = ()) -> list[Reasoned]:
        """Greedy reasoning until ``cue``, then each continuation's log-probability after it."""
        return reason_then_loglik(self, prompts, continuations, cue=cue,  # type: ignore[arg-type]
                                  max_new_tokens=max_new_tokens, stop=stop)
