"""The student's supervised format, its tokenization and sequence packing (pure, no torch).

Contract: one format serves training and evaluation, so what the student learns is what it is scored on.
A tailored record (``{"id", "question", "rationale", "answer", ...}``, the shape of :class:`arte.drafts.Draft`)
becomes one chat conversation, rendered by the model's own chat template::

    user:       {task instruction} Include your final answer with the tag <ans> and </ans>.

                Question: {question}
    assistant:  Let's think step by step. {rationale, ending in <ans>{answer}</ans>}

The loss covers the assistant part only (the ``Let's think step by step.`` opener, the rationale, the tag
and the end-of-turn token); the prompt tokens are masked. At evaluation the prompt ends with the opener
(:meth:`ChatFormat.eval_prompt`) and the student continues it; k-shot evaluation puts k solved records
before the question as earlier turns of the same conversation.

Prompt and completion are tokenized separately, so the boundary is the same in training and at
evaluation. Packing puts whole examples into rows of at most ``max_length`` tokens (first-fit decreasing)
with position ids that restart at 0 for each example: transformers derives a block-diagonal causal mask
from them, so packed examples never attend to each other (``tests`` check the packed loss equals the
per-example loss). Examples longer than ``max_length`` are dropped and counted, never truncated: a cut
rationale would teach the student to stop before its answer.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Sequence

from arte.answers import ANS_CLOSE, ANS_OPEN
from arte.drafts import Draft
from arte.errors import ConfigError
from arte.prompts import demo_rationale
from arte.tasks import Example as TaskExample
from arte.tasks import Task, format_question

__all__ = ["OPENER", "IGNORE", "ChatFormat", "Example", "PackedRow", "user_message", "assistant_message",
           "encode_records", "pack", "batch_order", "templated_records"]

OPENER = "Let's think step by step."
IGNORE = -100   # label of a position that is not trained on


def user_message(instruction: str, question: str) -> str:
    """The user turn: the task instruction, the answer-tag request and the question."""
    tail = f"Include your final answer with the tag {ANS_OPEN} and {ANS_CLOSE}."
    head = f"{instruction.strip()} {tail}" if instruction.strip() else tail
    return f"{head}\n\nQuestion: {question.strip()}"


def assistant_message(record: Draft) -> str:
    """The assistant turn the student learns: the opener, the rationale and the answer tag."""
    return f"{OPENER} {demo_rationale(record)}"


class ChatFormat:
    """Renders conversations with a tokenizer's chat template and turns them into token ids.

    ``tokenizer`` is a transformers tokenizer (``apply_chat_template`` and ``__call__``); its special-token
    markup (``<|im_start|>`` …) is parsed. The ids are valid for every backend of the same model (llama.cpp,
    torch and ONNX share the vocabulary).
    """

    def __init__(self, tokenizer: Any, instruction: str) -> None:
        self.tok = tokenizer
        self.instruction = instruction

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _turns(self, demos: Sequence[Draft], question: str) -> list[dict[str, str]]:
        msgs: list[dict[str, str]] = []
        for d in demos:
            msgs.append({"role": "user", "content": user_message(self.instruction, d.question)})
            msgs.append({"role": "assistant", "content": assistant_message(d)})
        msgs.append({"role": "user", "content": user_message(self.instruction, question)})
        return msgs

    def prompt_text(self, question: str, demos: Sequence[Draft] = ()) -> str:
        """The rendered conversation up to the assistant's turn (generation prompt included)."""
        return self.tok.apply_chat_template(self._turns(demos, question), tokenize=False,
                                            add_generation_prompt=True)

    def train_example(self, record: Draft) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids) of one training record; the completion ends the turn."""
        msgs = self._turns((), record.question)
        prompt = self.prompt_text(record.question)
        full = self.tok.apply_chat_template(msgs + [{"role": "assistant", "content": assistant_message(record)}],
                                            tokenize=False)
        if not full.startswith(prompt):
            raise ConfigError("tokenizer.chat_template", "the rendered conversation does not start with its "
                                                         "generation prompt; cannot split prompt and answer")
        return self._ids(prompt), self._ids(full[len(prompt):])

    def eval_prompt(self, question: str, demos: Sequence[Draft] = ()) -> list[int]:
        """Prompt ids for evaluation: the conversation, then the assistant's opener to continue."""
        return self._ids(self.prompt_text(question, demos)) + self._ids(OPENER)

    def answer_prompt(self, question: str, demos: Sequence[Draft] = ()) -> list[int]:
        """Prompt ids for log-likelihood evaluation: the assistant turn opens with ``<ans>`` directly."""
        return self._ids(self.prompt_text(question, demos)) + self._ids(ANS_OPEN)

    def encode(self, text: str) -> list[int]:
        """Ids of plain text (no markup)."""
        return self._ids(text)


@dataclass(frozen=True)
class Example:
    """One tokenized training example: the loss covers ``ids[n_prompt:]``."""

    id: str
    ids: tuple[int, ...]
    n_prompt: int


@dataclass(frozen=True)
class PackedRow:
    """One training row: examples side by side, then padding. ``labels[i]`` is the token position ``i``
    predicts, or ``IGNORE`` (prompt, last token of an example, padding)."""

    input_ids: tuple[int, ...]
    position_ids: tuple[int, ...]
    labels: tuple[int, ...]
    example_ids: tuple[str, ...]
    n_tokens: int   # real (non-padding) tokens


def encode_records(fmt: ChatFormat, records: Sequence[Draft], max_length: int) -> tuple[list[Example], list[str]]:
    """Tokenize records; returns (examples, ids of records dropped for exceeding ``max_length``)."""
    if max_length < 8:
        raise ConfigError("max_length", f"must be >= 8, got {max_length}")
    out: list[Example] = []
    dropped: list[str] = []
    for r in records:
        p, c = fmt.train_example(r)
        if len(p) + len(c) > max_length:
            dropped.append(r.id)
            continue
        out.append(Example(r.id, tuple(p + c), len(p)))
    return out, dropped


def pack(examples: Sequence[Example], max_length: int, pad_id: int) -> list[PackedRow]:
    """First-fit-decreasing packing into rows of exactly ``max_length`` tokens (padding at the end).

    Labels are shifted here: ``labels[i]`` is the token that position ``i`` predicts, so the loss needs no
    further shifting and a packed row never predicts across an example boundary. The padding run gets its
    own positions (0, 1, …), so it is one more masked segment that no example attends to. Deterministic:
    ties keep the input order.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i].ids)
        if n > max_length:
            raise ConfigError("max_length", f"example {examples[i].id!r} has {n} tokens, more than {max_length}")
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(max_length - n)
    rows = []
    for b in bins:
        ids: list[int] = []
        pos: list[int] = []
        lab: list[int] = []
        for i in b:
            e = examples[i]
            ids += e.ids
            pos += range(len(e.ids))
            # position j predicts token j+1; only completion tokens are targets, never across examples
            lab += [e.ids[j + 1] if j + 1 >= e.n_prompt else IGNORE for j in range(len(e.ids) - 1)] + [IGNORE]
        n_pad = max_length - len(ids)
        rows.append(PackedRow(tuple(ids + [pad_id] * n_pad), tuple(pos + list(range(n_pad))),
                              tuple(lab + [IGNORE] * n_pad), tuple(examples[i].id for i in b), len(ids)))
    return rows


def batch_order(n_rows: int, batch: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Row indices of each batch of one epoch: a shuffle that depends only on (seed, epoch), so a resumed
    run sees exactly the batches the interrupted one would have seen. The last partial batch is kept."""
    if batch < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch}")
    key = int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "big")
    idx = list(range(n_rows))
    random.Random(key).shuffle(idx)
    return [idx[i:i + batch] for i in range(0, n_rows, batch)]


def templated_records(task: Task, examples: Sequence[TaskExample]) -> list[Draft]:
    """Training records from labelled examples with a fixed, templated rationale: development data and
    the "gold answers, no teacher" baseline. Not a substitute for a teacher's rationales."""
    out = []
    for e in examples:
        why = ("I check each option against the question and keep the one that fits." if e.choices
               else "I work through the question step by step.")
        out.append(Draft(id=f"gold-{e.id}", question=format_question(task, e),
                         rationale=f"{why} The answer is {e.answer}. {ANS_OPEN}{e.answer}{ANS_CLOSE}",
                         answer=e.answer, task=task.name, provenance={"source": "templated", "example": e.id}))
    return out
