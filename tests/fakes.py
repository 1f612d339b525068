"""A fake student for unit tests: bytes as tokens, and a "model" that copies the demonstration's answer.

It answers every item with the answer of the first ``<ans>…</ans>`` in its prompt (the draft's), so a
draft's expected accuracy is exactly the share of items whose answer equals the draft's answer.
"""

from __future__ import annotations

from typing import Sequence

from arte.answers import parse_answer
from arte.student import Continuation, Generation


class CopyingStudent:
    name = "copying-fake"

    def __init__(self) -> None:
        self.loglik_calls = 0
        self.generate_calls = 0

    @property
    def n_ctx(self) -> int:
        return 1 << 20

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        return ([256] if bos else []) + list(text.encode("utf-8"))

    def _text(self, tokens: Sequence[int]) -> str:
        return bytes(t for t in tokens if t < 256).decode("utf-8")

    def _demo_answer(self, tokens: Sequence[int]) -> str | None:
        # The header itself mentions "<ans> and </ans>": the demonstration starts at the first "Answer:".
        return parse_answer(self._text(tokens).split("\nAnswer:", 1)[-1])

    def loglik(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[Continuation]:
        self.loglik_calls += 1
        demo = self._demo_answer(prompt) or ""
        out = []
        for c in continuations:
            text = self._text(c)
            per_byte = -0.1 if text == f"{demo}</ans>" else -2.0
            out.append(Continuation(per_byte * len(c), len(c), per_byte > -1))
        return out

    def loglik_batch(self, requests):
        return [self.loglik(p, c) for p, c in requests]

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0) -> list[Generation]:
        self.generate_calls += 1
        out = []
        for p in prompts:
            demo = self._demo_answer(p) or "?"
            text = f" I copy the example. <ans>{demo}</ans> and more"
            cut = min((text.find(s), s) for s in stop if s in text) if any(s in text for s in stop) else None
            out.append(Generation(text[:cut[0]], cut[1], 10) if cut else Generation(text, "length", 10))
        return out

    def close(self) -> None:
        pass
