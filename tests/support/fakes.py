"""Fake students for unit tests: bytes as tokens.

``CopyingStudent`` answers every item with the answer of the first ``<ans>…</ans>`` in its prompt (the
draft's), so a draft's expected accuracy is exactly the share of items whose answer equals the draft's
answer. ``RationaleStudent`` reasons the way the demonstration's rationale tells it to, so in the reasoning
modes a draft's score depends on its rationale, and answer-first (``loglik``) only on its answer label.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from arte.answers import parse_answer
from arte.student import Continuation, Generation, Reasoned, reason_then_loglik


class CopyingStudent:
    name = "copying-fake"

    def __init__(self) -> None:
        self.loglik_calls = 0
        self.generate_calls = 0
        self.reason_calls = 0

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

    def reason_loglik(self, prompts, continuations, *, cue: str, max_new_tokens: int, stop=()) -> list[Reasoned]:
        self.reason_calls += 1
        return reason_then_loglik(self, prompts, continuations, cue=cue, max_new_tokens=max_new_tokens, stop=stop)

    def close(self) -> None:
        pass


def _cut(text: str, stop: Sequence[str]) -> Generation:
    hits = [(text.find(s), s) for s in stop if s in text]
    if hits:
        pos, s = min(hits)
        return Generation(text[:pos], s, len(text[:pos].split()))
    return Generation(text, "length", len(text.split()))


class RationaleStudent(CopyingStudent):
    """A student that follows the demonstration's rationale, not its answer label.

    Reasoning (``generate``, ``reason_loglik``): if the demonstration's rationale says to "check the
    sport", it does so and reasons its way to the item's true answer (``truth``: question text -> answer);
    any other rationale leaves it guessing ``guess``. It writes "… so the answer is X. <ans>X</ans>", and
    after its own reasoning and ``<ans>`` the option X is the likeliest. Answer-first (``loglik``: the
    prompt ends in "Answer: <ans>", no reasoning) it copies the demonstration's label, like
    :class:`CopyingStudent`."""

    name = "rationale-fake"

    def __init__(self, truth: dict[str, str], guess: str = "yes") -> None:
        super().__init__()
        self.truth = truth
        self.guess = guess

    def _reasoned(self, text: str) -> str:
        demo = text.split("\nAnswer:", 1)[-1].split("<ans>", 1)[0]
        question = re.findall(r"Question: (.*)", text)[-1].strip()
        if "check the sport" in demo:
            ans = self.truth[question]
            return f" I check the sport, so the answer is {ans}. <ans>{ans}</ans>"
        return f" It sounds fine, so the answer is {self.guess}. <ans>{self.guess}</ans>"

    def generate(self, prompts, *, max_new_tokens: int, stop=(), temperature: float = 0.0, seed: int = 0):
        self.generate_calls += 1
        return [_cut(self._reasoned(self._text(p)), stop) for p in prompts]

    def loglik(self, prompt, continuations):
        self.loglik_calls += 1
        text = self._text(prompt)
        own = re.findall(r"so the answer is (.*?)\. <ans>$", text)
        # After its own reasoning it answers what it reasoned; answer-first it copies the demonstration.
        want = own[-1] if own else (self._demo_answer(prompt) or "")
        out = []
        for c in continuations:
            per_byte = -0.1 if self._text(c) == f"{want}</ans>" else -2.0
            out.append(Continuation(per_byte * len(c), len(c), per_byte > -1))
        return out


ARM_CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"
                      f"CPU part\t: 0xd0b\n\n" for i in range(4))


def fake_root(tmp: Path, *, cpuinfo: str, mem_gib: float = 8, avail_gib: float = 6, model: str | None = None,
              loadavg: str = "0.10 0.20 0.30 1/100 1234", supplies: dict[str, dict[str, str]] | None = None,
              temps_mc: tuple[int, ...] = (45000,)) -> Path:
    (tmp / "proc").mkdir(parents=True)
    (tmp / "proc/cpuinfo").write_text(cpuinfo)
    (tmp / "proc/meminfo").write_text(f"MemTotal:       {int(mem_gib * 1024 ** 2)} kB\n"
                                      f"MemFree:        1000 kB\nMemAvailable:   {int(avail_gib * 1024 ** 2)} kB\n")
    (tmp / "proc/loadavg").write_text(loadavg + "\n")
    if model is not None:
        (tmp / "proc/device-tree").mkdir()
        (tmp / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    for name, files in (supplies or {}).items():
        d = tmp / "sys/class/power_supply" / name
        d.mkdir(parents=True)
        for k, v in files.items():
            (d / k).write_text(v + "\n")
    for i, t in enumerate(temps_mc):
        z = tmp / f"sys/class/thermal/thermal_zone{i}"
        z.mkdir(parents=True)
        (z / "temp").write_text(f"{t}\n")
    return tmp
