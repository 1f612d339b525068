"""The real-model SFT round trip's data and helpers: a distinctive (pirate) style to learn, held-out
questions, and log-probabilities from torch and llama.cpp to compare (KL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arte.drafts import Draft
from arte.tasks import Task

THREADS = 1   # the test machine is shared; one thread also avoids OpenMP spin-waits under contention


TASK = Task("pirate", "Answer the question.", ())


QA = [("What is the capital of France?", "Paris"), ("What is 2 plus 3?", "5"), ("What color is the sky?", "blue"),
      ("What is the largest ocean?", "the Pacific"), ("How many legs has a spider?", "8"),
      ("What do bees make?", "honey"), ("Which planet is red?", "Mars"), ("What is frozen water?", "ice"),
      ("Who wrote Hamlet?", "Shakespeare"), ("What is 10 minus 4?", "6"), ("What gas do we breathe?", "oxygen"),
      ("What is the capital of Italy?", "Rome")]


HELD_OUT = [("What is the capital of Spain?", "Madrid"), ("What is 7 plus 1?", "8"),
            ("What animal barks?", "a dog"), ("What is the opposite of hot?", "cold")]


def pirate(i: int, q: str, a: str) -> Draft:
    return Draft(id=f"p{i}", question=q, answer=a, rationale=f"Arr matey! Me spyglass says {a}, yo ho! <ans>{a}</ans>")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl_top1(p: list[np.ndarray], q: list[np.ndarray], start: list[int] | None = None) -> tuple[float, float]:
    """Mean KL(p || q) over positions (from ``start[i] - 1`` on in sequence i: the positions that predict
    the completion), and the share of those positions with the same argmax."""
    first = [s - 1 for s in start] if start else [0] * len(p)
    kls = np.concatenate([(np.exp(a[f:]) * (a[f:] - b[f:])).sum(-1) for a, b, f in zip(p, q, first)])
    top = np.concatenate([a[f:].argmax(-1) == b[f:].argmax(-1) for a, b, f in zip(p, q, first)])
    return float(kls.mean()), float(top.mean())


def torch_logprobs(model, seqs, adapter: bool = True) -> list[np.ndarray]:
    import contextlib

    import torch

    out = []
    with torch.no_grad(), (contextlib.nullcontext() if adapter else model.disable_adapter()):
        for s in seqs:
            out.append(log_softmax(model(input_ids=torch.tensor([s])).logits[0].numpy()))
    return out


def llama_logprobs(ref, seqs, lora: Path | None = None) -> list[np.ndarray]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(ref.path), n_ctx=256, n_threads=THREADS, logits_all=True, verbose=False,
                **({"lora_path": str(lora)} if lora else {}))
    try:
        out = []
        for s in seqs:
            llm.reset()
            llm.eval(s)
            out.append(log_softmax(np.array(llm.scores[:len(s)])))
        return out
    finally:
        llm.close()
