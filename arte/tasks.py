"""Task data: BIG-bench ``task.json`` and JSONL, loaded into immutable examples, split by a seed.

Contract: ``load_task(path)`` accepts any BIG-bench ``task.json`` (multiple-choice ``target_scores``,
exact-match ``target``, the task's prefixes and description) and JSONL with one example per line, either
``{"input", "target"}`` (a string or a list of accepted strings) or ``{"input", "choices", "answer"}``
(the answer as a choice string or a 0-based index). A malformed file raises :class:`TaskFormatError`
naming the file, the example index and the field. Nothing here touches the network.

Splits are deterministic for a seed and independent of the order of the file: each example is ranked by
``sha256(seed, example id)``. The same seed gives the same seeds/validation/holdout on every machine.

Labels: an item's label (:func:`label_of`) is its canonical answer: the correct option of a
multiple-choice item, the first accepted target of an exact-match item. A small student that copies the
demonstration's answer turns a draft's score into "how many items share the draft's label", so the items
drafts are scored on are label-balanced where the data allow (:func:`balanced_order`: labels take turns,
so every prefix is as balanced as the data allow), and every part reports its label distribution
(:func:`label_counts`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from arte.errors import ConfigError, TaskFormatError

__all__ = ["Example", "Task", "TaskSplit", "load_task", "split_task", "partition", "format_question", "label_of",
           "label_counts", "balanced_order"]


@dataclass(frozen=True)
class Example:
    """One labelled item. ``choices`` is empty for exact-match items.

    ``targets`` holds every accepted answer: for multiple choice the choice(s) with the top score,
    for exact match the accepted strings (the first is the canonical one).
    """

    id: str
    input: str
    targets: tuple[str, ...]
    choices: tuple[str, ...] = ()

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)

    @property
    def answer(self) -> str:
        """The canonical answer."""
        return self.targets[0]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "input": self.input}
        if self.choices:
            d["choices"] = list(self.choices)
            d["answer"] = self.answer
        else:
            d["target"] = list(self.targets) if len(self.targets) > 1 else self.targets[0]
        return d


@dataclass(frozen=True)
class Task:
    """A task: its instructions and its examples."""

    name: str
    description: str
    examples: tuple[Example, ...]
    task_prefix: str = ""
    input_prefix: str = ""
    output_prefix: str = ""
    source: str = ""

    @property
    def kind(self) -> str:
        """``multiple_choice``, ``exact_match`` or ``mixed``."""
        mc = sum(e.is_multiple_choice for e in self.examples)
        if mc == len(self.examples):
            return "multiple_choice"
        return "exact_match" if mc == 0 else "mixed"

    @property
    def instruction(self) -> str:
        """What the task asks, for prompts: the description, then the task prefix if it adds anything."""
        parts: list[str] = []
        for p in (self.description.strip(), self.task_prefix.strip()):
            if not p or any(p in q for q in parts):
                continue
            p = p[:-1] + "." if p.endswith(":") else p
            parts.append(p if p.endswith((".", "?", "!")) else p + ".")
        return " ".join(parts)

    def with_examples(self, examples: Iterable[Example]) -> "Task":
        return Task(self.name, self.description, tuple(examples), self.task_prefix, self.input_prefix,
                    self.output_prefix, self.source)


@dataclass(frozen=True)
class TaskSplit:
    """Disjoint parts of a task: seed examples for the teacher, validation items for scoring drafts,
    holdout items for before/after evaluation."""

    seeds: tuple[Example, ...]
    validation: tuple[Example, ...]
    holdout: tuple[Example, ...]
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def label_counts(self) -> dict[str, dict[str, int]]:
        """The label distribution of each part (see :func:`label_counts`)."""
        return {"seeds": label_counts(self.seeds), "validation": label_counts(self.validation),
                "holdout": label_counts(self.holdout)}


def label_of(item: Any) -> str:
    """The label of an item: the canonical answer of an :class:`Example` (the correct option of a
    multiple-choice item, the first accepted target of an exact-match one); for anything else with an
    ``answer`` (a draft, a training record) that answer. Surrounding whitespace is dropped."""
    return item.answer.strip()


def label_counts(items: Iterable[Any]) -> dict[str, int]:
    """How many items carry each label (:func:`label_of`; strings count as labels themselves), the most
    frequent first, ties by label: the label distribution every dataset reports."""
    counts: dict[str, int] = {}
    for x in items:
        lab = x if isinstance(x, str) else label_of(x)
        counts[lab] = counts.get(lab, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def balanced_order(examples: Sequence[Example], seed: int = 0, salt: str = "balanced") -> list[Example]:
    """``examples`` reordered so that labels take turns: one item of each label per round (each label's
    items in hash-rank order, the labels of a round in an order drawn from the seed, not the alphabet),
    a label that runs out leaving the rounds. Every prefix is therefore as label-balanced as the data
    allow. Deterministic for ``seed`` and independent of the input order."""
    groups: dict[str, list[Example]] = {}
    for e in _rank(examples, seed, salt):
        groups.setdefault(label_of(e), []).append(e)
    labels = sorted(groups, key=lambda lab: hashlib.sha256(f"{seed}\x00{salt}\x00label\x00{lab}".encode()).hexdigest())
    out: list[Example] = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        out += [groups[lab][i] for lab in labels if i < len(groups[lab])]
    return out


def format_question(task: Task, example: Example) -> str:
    """The question text of an item as students and teachers see it.

    The task's input prefix labels the input; multiple-choice options are listed unless the input already
    contains all of them, so a generating student can answer with one of them verbatim.
    """
    prefix = task.input_prefix.strip()
    text = f"{prefix} {example.input.strip()}" if prefix else example.input.strip()
    if example.choices and not all(c in example.input for c in example.choices):
        text += "\nOptions: " + ", ".join(example.choices)
    return text


def load_task(path: str | Path, *, name: str | None = None, description: str | None = None) -> Task:
    """Load a BIG-bench ``task.json`` or a JSONL file (by extension: ``.jsonl`` is JSONL)."""
    p = Path(path)
    if not p.is_file():
        raise TaskFormatError(str(p), "no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskFormatError(str(p), f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    if p.suffix.lower() in {".jsonl", ".ndjson"}:
        return _load_jsonl(p, text, name=name, description=description)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskFormatError(str(p), f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return _load_bigbench(p, data, name=name, description=description)


def _str_field(path: Path, d: dict[str, Any], key: str, index: int | None, required: bool = True) -> str:
    v = d.get(key)
    if v is None:
        if required:
            raise TaskFormatError(str(path), "missing", index, key)
        return ""
    if not isinstance(v, str):
        raise TaskFormatError(str(path), f"expected a string, got {type(v).__name__}", index, key)
    return v


def _load_bigbench(p: Path, data: Any, *, name: str | None, description: str | None) -> Task:
    if not isinstance(data, dict):
        raise TaskFormatError(str(p), f"expected a JSON object (a BIG-bench task.json), got {type(data).__name__}")
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        raise TaskFormatError(str(p), "expected a non-empty list", None, "examples")
    task_name = name or _str_field(p, data, "name", None, required=False) or p.stem
    parsed = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict):
            raise TaskFormatError(str(p), f"expected an object, got {type(ex).__name__}", i)
        parsed.append(_parse_example(p, ex, i, task_name))
    _check_unique_ids(p, parsed)
    prefix = data.get("task_prefix", data.get("prefix", ""))
    if not isinstance(prefix, str):
        raise TaskFormatError(str(p), "expected a string", None, "task_prefix")
    return Task(
        name=task_name,
        description=description if description is not None else _str_field(p, data, "description", None, False),
        examples=tuple(parsed),
        task_prefix=prefix,
        input_prefix=_str_field(p, data, "example_input_prefix", None, False),
        output_prefix=_str_field(p, data, "example_output_prefix", None, False),
        source=str(p),
    )


def _load_jsonl(p: Path, text: str, *, name: str | None, description: str | None) -> Task:
    task_name = name or p.stem
    parsed = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        index = len(parsed)
        try:
            ex = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskFormatError(str(p), f"invalid JSON on line {lineno}: {e.msg}", index) from None
        if not isinstance(ex, dict):
            raise TaskFormatError(str(p), f"line {lineno}: expected an object, got {type(ex).__name__}", index)
        parsed.append(_parse_example(p, ex, index, task_name))
    if not parsed:
        raise TaskFormatError(str(p), "no examples (the file is empty)")
    _check_unique_ids(p, parsed)
    return Task(name=task_name, description=description or "", examples=tuple(parsed), source=str(p))


def _parse_example(p: Path, ex: dict[str, Any], i: int, task_name: str) -> Example:
    inp = _str_field(p, ex, "input", i)
    if not inp.strip():
        raise TaskFormatError(str(p), "is empty", i, "input")
    ex_id = ex.get("id", f"{task_name}:{i}")
    if not isinstance(ex_id, (str, int)) or isinstance(ex_id, bool):
        raise TaskFormatError(str(p), "expected a string or an integer", i, "id")
    ex_id = str(ex_id)
    if "target_scores" in ex:
        ts = ex["target_scores"]
        if not isinstance(ts, dict) or len(ts) < 2:
            raise TaskFormatError(str(p), "expected an object with at least two options", i, "target_scores")
        for k, v in ts.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TaskFormatError(str(p), f"score of option {k!r} is not a finite number", i, "target_scores")
        best = max(ts.values())
        if best <= 0:
            raise TaskFormatError(str(p), "no option has a positive score", i, "target_scores")
        choices = tuple(ts)
        return Example(ex_id, inp, tuple(c for c in choices if ts[c] == best), choices)
    if "choices" in ex:
        choices = ex["choices"]
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise TaskFormatError(str(p), "expected a list of at least two non-empty strings", i, "choices")
        if len(set(choices)) != len(choices):
            raise TaskFormatError(str(p), "options are not unique", i, "choices")
        if "answer" not in ex:
            raise TaskFormatError(str(p), "missing", i, "answer")
        ans = ex["answer"]
        if isinstance(ans, bool) or not isinstance(ans, (int, str)):
            raise TaskFormatError(str(p), "expected one of the choices or a 0-based index", i, "answer")
        if isinstance(ans, int):
            if not 0 <= ans < len(choices):
                raise TaskFormatError(str(p), f"index {ans} is out of range for {len(choices)} choices", i, "answer")
            ans = choices[ans]
        elif ans not in choices:
            raise TaskFormatError(str(p), f"{ans!r} is not one of the choices", i, "answer")
        return Example(ex_id, inp, (ans,), tuple(choices))
    if "target" in ex:
        t = ex["target"]
        targets = [t] if isinstance(t, str) else t
        if not isinstance(targets, list) or not targets or not all(isinstance(x, str) for x in targets):
            raise TaskFormatError(str(p), "expected a string or a non-empty list of strings", i, "target")
        if not any(x.strip() for x in targets):
            raise TaskFormatError(str(p), "is empty", i, "target")
        return Example(ex_id, inp, tuple(x for x in targets if x.strip()))
    raise TaskFormatError(str(p), "needs 'target', 'target_scores' or 'choices' + 'answer'", i, "target")


def _check_unique_ids(p: Path, examples: list[Example]) -> None:
    seen: dict[str, int] = {}
    for i, e in enumerate(examples):
        if e.id in seen:
            raise TaskFormatError(str(p), f"duplicate id {e.id!r} (first at example {seen[e.id]})", i, "id")
        seen[e.id] = i


def _rank(examples: Sequence[Example], seed: int, salt: str = "") -> list[Example]:
    def key(e: Example) -> str:
        return hashlib.sha256(f"{seed}\x00{salt}\x00{e.id}".encode()).hexdigest()

    return sorted(examples, key=key)


def _count(value: int | float, n: int, field_name: str) -> int:
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(field_name, f"a fraction must be in [0, 1], got {value}")
        return int(round(value * n))
    if value < 0:
        raise ConfigError(field_name, f"must be >= 0, got {value}")
    return value


def split_task(task: Task, *, seed: int = 0, n_seeds: int = 3, validation: int | float = 0.5,
               holdout: int | float | None = None, balanced: bool = True) -> TaskSplit:
    """Split a task into seed examples, validation items and holdout items, deterministically by ``seed``.

    The ``n_seeds`` seed examples (the pool the teacher's question prompts draw from) are label-balanced
    (:func:`balanced_order`), whatever ``balanced`` says.

    ``validation``/``holdout`` are counts (int) or fractions of the examples left after the seeds (float).
    ``holdout=None`` takes everything that remains. With ``balanced`` (the default) the validation items
    (what drafts are scored on) are label-balanced where the data allow, in :func:`balanced_order` (so
    any prefix of them is balanced too), but take at most half of a label's items while other items can
    fill the validation: the holdout (before/after evaluation) keeps at least as many items of each label
    as the validation, instead of losing a rare label to it. The holdout takes what is left in hash-rank
    order. ``balanced=False``: plain hash rank for both.
    """
    if n_seeds < 0:
        raise ConfigError("n_seeds", f"must be >= 0, got {n_seeds}")
    ranked = _rank(task.examples, seed)
    if n_seeds > len(ranked):
        raise ConfigError("n_seeds", f"{n_seeds} seed examples asked but the task has {len(ranked)}")
    # The seed pool (what the teacher is shown) is label-stratified: a hash-rank draw of three sports
    # seeds was all "plausible", so every question prompt, and all tailored data, said "plausible".
    chosen = {e.id for e in balanced_order(ranked, seed, salt="seeds")[:n_seeds]}
    seeds = [e for e in ranked if e.id in chosen]
    rest = [e for e in ranked if e.id not in chosen]
    n_val = _count(validation, len(rest), "validation")
    n_hold = len(rest) - n_val if holdout is None else _count(holdout, len(rest), "holdout")
    if n_val + n_hold > len(rest):
        raise ConfigError("holdout", f"validation ({n_val}) + holdout ({n_hold}) exceed the {len(rest)} "
                                     f"examples left after {n_seeds} seeds")
    if not balanced:
        return TaskSplit(tuple(seeds), tuple(rest[:n_val]), tuple(rest[n_val:n_val + n_hold]), seed)
    val = _balanced_take(rest, n_val, seed)
    taken = {e.id for e in val}
    left = [e for e in rest if e.id not in taken]
    return TaskSplit(tuple(seeds), tuple(val), tuple(left[:n_hold]), seed)


def _balanced_take(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """``n`` examples in :func:`balanced_order`, at most half of each label's items first, then (only if
    that does not fill ``n``) the others in the same order."""
    total = label_counts(examples)
    taken: dict[str, int] = {}
    first: list[Example] = []
    later: list[Example] = []
    for e in balanced_order(examples, seed, salt="validation"):
        lab = label_of(e)
        if len(first) < n and taken.get(lab, 0) < total[lab] // 2:
            first.append(e)
            taken[lab] = taken.get(lab, 0) + 1
        else:
            later.append(e)
    return first + later[:n - len(first)]


def partition(examples: Sequence[Example], n_parts: int, *, seed: int = 0) -> list[tuple[Example, ...]]:
    """Deal examples into ``n_parts`` disjoint, near-equal parts (e.g. one private split per device),
    stratified by label: each part gets a near-equal share of every label, so each can balance its own
    validation items."""
    if n_parts < 1:
        raise ConfigError("n_parts", f"must be >= 1, got {n_parts}")
    groups: dict[str, list[Example]] = {}
    for e in _rank(examples, seed, salt="partition"):
        groups.setdefault(label_of(e), []).append(e)
    # one label after the other, each in hash order: dealing this round-robin spreads every label evenly
    dealt = [e for lab in sorted(groups) for e in groups[lab]]
    return [tuple(dealt[i::n_parts]) for i in range(n_parts)]
