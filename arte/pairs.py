"""Preference pairs: students' scores of drafts → chosen/rejected pairs for DPO on the teacher.

Contract: ``build_pairs(task, drafts, scores, seeds, config)`` returns :class:`PreferencePair` objects
(``prompt`` messages, ``chosen`` and ``rejected`` texts, ``kind``, ``margin``, the draft/question ids
behind each side); :func:`write_pairs` / :func:`read_pairs` keep them as JSONL. Pure: no model, no I/O
beyond the paths given.

Scores (:func:`score_table`): ``scores[draft_id] = (n_items, n_correct)``, floats allowed (counts noised
by local differential privacy). A draft is *scored* when ``n_items >= min_items``; its
``s_r = clip(n_correct / n_items, 0, 1)`` (noise can push the ratio out of [0, 1]). ``s_q`` of a
question = mean ``s_r`` of its scored rationales. Drafts without a score, with too few items, or with
non-finite counts are left out and counted by reason.

Question pairs (the paper: top vs bottom quartile of ``s_q``, on the question-generation prompt): the
scored questions are ranked by ``s_q`` (ties by id); ``T`` = the top ``quartile`` share (at least one),
``B`` = the bottom share. Questions of ``T`` that do not beat every question of ``B`` by more than
``min_margin`` are dropped (ties carry no preference). ``T`` (best first) and ``B`` (worst first) are cut
into blocks of ``questions_per_block``; block ``i`` of ``T`` is chosen over block ``i`` of ``B``, for as
many blocks as both have. Prompt: :func:`arte.prompts.question_prompt` with the seeds (the first
``n_seeds``) asking for as many questions as the block holds; completions:
:func:`arte.prompts.question_block`. ``margin`` = mean ``s_q`` of chosen − of rejected.

Rationale pairs (the paper: argmax vs argmin ``s_r`` per question, on the plain prompt): for each
question with at least two scored rationales, chosen = highest ``s_r``, rejected = lowest (ties between
drafts broken by more items, then id); the pair is skipped when ``s_r`` max − min ``<= min_margin`` or
the two rationale texts are identical. Prompt: ``rationale_prompt(task, question, "plain")``; completions:
the rationales, ending in ``<ans>…</ans>``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from arte.drafts import Draft
from arte.errors import ConfigError, PairFormatError
from arte.prompts import PLAIN_STYLE, demo_rationale, question_block, question_prompt, rationale_prompt
from arte.tasks import Example, Task

__all__ = ["PairConfig", "PreferencePair", "ScoreTable", "score_table", "build_pairs", "write_pairs",
           "read_pairs", "pair_from_dict", "pair_counts", "KINDS"]

KINDS = ("question", "rationale")


@dataclass(frozen=True)
class PairConfig:
    """How scores become pairs.

    Args:
        kinds: which pairs to build: ``question``, ``rationale`` or both.
        min_items: a draft needs at least this many scored items (a float: noised counts) to count.
        min_margin: a pair needs chosen − rejected score strictly above this (0: skip exact ties).
        quartile: the top/bottom share of questions for question pairs (the paper: 0.25).
        questions_per_block: questions per chosen/rejected completion (the paper's prompt asks for 5).
        n_seeds: seed examples shown in the question prompt of a pair.
    """

    kinds: tuple[str, ...] = KINDS
    min_items: float = 1.0
    min_margin: float = 0.0
    quartile: float = 0.25
    questions_per_block: int = 5
    n_seeds: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.kinds, list):   # configs built from JSON
            object.__setattr__(self, "kinds", tuple(self.kinds))
        if isinstance(self.kinds, str) or not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ConfigError("kinds", f"must be a non-empty tuple of {', '.join(KINDS)}, got {self.kinds!r}")
        if not (self.min_items > 0) or not math.isfinite(self.min_items):
            raise ConfigError("min_items", f"must be a finite number > 0, got {self.min_items}")
        if not 0.0 <= self.min_margin < 1.0:
            raise ConfigError("min_margin", f"must be in [0, 1), got {self.min_margin}")
        if not 0.0 < self.quartile <= 0.5:
            raise ConfigError("quartile", f"must be in (0, 0.5], got {self.quartile}")
        if self.questions_per_block < 1 or self.n_seeds < 1:
            raise ConfigError("questions_per_block" if self.questions_per_block < 1 else "n_seeds", "must be >= 1")


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example: ``prompt`` (chat messages), the ``chosen`` and ``rejected`` assistant replies."""

    id: str
    kind: str
    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    margin: float
    chosen_ids: tuple[str, ...]
    rejected_ids: tuple[str, ...]
    task: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "prompt": [dict(m) for m in self.prompt],
                "chosen": self.chosen, "rejected": self.rejected, "margin": self.margin,
                "chosen_ids": list(self.chosen_ids), "rejected_ids": list(self.rejected_ids), "task": self.task}

    def to_trl(self) -> dict[str, Any]:
        """TRL's conversational preference format."""
        return {"prompt": [dict(m) for m in self.prompt],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


@dataclass
class ScoreTable:
    """Per-draft ``s_r``, per-question ``s_q`` and the drafts left out, by reason."""

    s_r: dict[str, float]
    s_q: dict[str, float]
    items: dict[str, float]
    excluded: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"scored_drafts": len(self.s_r), "scored_questions": len(self.s_q), "excluded": dict(self.excluded)}


def score_table(drafts: Sequence[Draft], scores: Mapping[str, tuple[float, float]],
                config: PairConfig = PairConfig()) -> ScoreTable:
    """Compute ``s_r`` and ``s_q`` (see the module docstring)."""
    s_r: dict[str, float] = {}
    items: dict[str, float] = {}
    excluded: dict[str, int] = {}
    by_q: dict[str, list[float]] = {}

    def skip(reason: str) -> None:
        excluded[reason] = excluded.get(reason, 0) + 1

    for d in drafts:
        if d.id not in scores:
            skip("no_score")
            continue
        try:
            n_items, n_correct = (float(x) for x in scores[d.id])
        except (TypeError, ValueError):
            skip("bad_score")
            continue
        if not (math.isfinite(n_items) and math.isfinite(n_correct)):
            skip("bad_score")
            continue
        if n_items < config.min_items:
            skip("too_few_items")
            continue
        s = min(1.0, max(0.0, n_correct / n_items))
        s_r[d.id], items[d.id] = s, n_items
        by_q.setdefault(d.question_id or d.id, []).append(s)
    s_q = {q: sum(v) / len(v) for q, v in by_q.items()}
    return ScoreTable(s_r, s_q, items, excluded)


def _question_pairs(task: Task, drafts: Sequence[Draft], table: ScoreTable, seeds: Sequence[Example],
                    config: PairConfig) -> list[PreferencePair]:
    text = {}
    for d in drafts:
        text.setdefault(d.question_id or d.id, d.question)
    ranked = sorted(table.s_q, key=lambda q: (-table.s_q[q], q))
    if len(ranked) < 2:
        return []
    k = max(1, int(len(ranked) * config.quartile))
    bottom = ranked[::-1][:k]                       # worst first
    best_bottom = max(table.s_q[q] for q in bottom)
    top = [q for q in ranked[:k] if q not in bottom and table.s_q[q] > best_bottom + config.min_margin]
    size = config.questions_per_block
    t_blocks = [top[i:i + size] for i in range(0, len(top), size)]
    b_blocks = [bottom[i:i + size] for i in range(0, len(bottom), size)]
    pairs = []
    for i, (tb, bb) in enumerate(zip(t_blocks, b_blocks)):
        n = min(len(tb), len(bb))
        tb, bb = tb[:n], bb[:n]
        margin = sum(table.s_q[q] for q in tb) / n - sum(table.s_q[q] for q in bb) / n
        pairs.append(PreferencePair(
            id=f"qpair{i:04d}", kind="question",
            prompt=tuple(question_prompt(task, seeds[:config.n_seeds], n)),
            chosen=question_block([text[q] for q in tb]), rejected=question_block([text[q] for q in bb]),
            margin=round(margin, 6), chosen_ids=tuple(tb), rejected_ids=tuple(bb), task=task.name))
    return pairs


def _rationale_pairs(task: Task, drafts: Sequence[Draft], table: ScoreTable,
                     config: PairConfig) -> list[PreferencePair]:
    by_q: dict[str, list[Draft]] = {}
    for d in drafts:
        if d.id in table.s_r:
            by_q.setdefault(d.question_id or d.id, []).append(d)
    pairs = []
    for qid in sorted(by_q):
        group = by_q[qid]
        if len(group) < 2:
            continue
        best = min(group, key=lambda d: (-table.s_r[d.id], -table.items[d.id], d.id))
        worst = min(group, key=lambda d: (table.s_r[d.id], -table.items[d.id], d.id))
        margin = table.s_r[best.id] - table.s_r[worst.id]
        chosen, rejected = demo_rationale(best), demo_rationale(worst)
        if margin <= config.min_margin or chosen == rejected:
            continue
        pairs.append(PreferencePair(
            id=f"rpair-{qid}", kind="rationale", prompt=tuple(rationale_prompt(task, best.question, PLAIN_STYLE)),
            chosen=chosen, rejected=rejected, margin=round(margin, 6), chosen_ids=(best.id,),
            rejected_ids=(worst.id,), task=task.name))
    return pairs


def build_pairs(task: Task, drafts: Sequence[Draft], scores: Mapping[str, tuple[float, float]],
                seeds: Sequence[Example], config: PairConfig = PairConfig()) -> list[PreferencePair]:
    """Question pairs then rationale pairs (see the module docstring). Stable entry point: the server's
    job worker calls it by this name."""
    if "question" in config.kinds and not seeds:
        raise ConfigError("seeds", "question pairs need the seed examples of the question prompt")
    table = score_table(drafts, scores, config)
    pairs: list[PreferencePair] = []
    if "question" in config.kinds:
        pairs += _question_pairs(task, drafts, table, seeds, config)
    if "rationale" in config.kinds:
        pairs += _rationale_pairs(task, drafts, table, config)
    return pairs


def pair_counts(pairs: Iterable[PreferencePair]) -> dict[str, int]:
    """Pairs per kind."""
    out = {k: 0 for k in KINDS}
    for p in pairs:
        out[p.kind] = out.get(p.kind, 0) + 1
    return out


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair]) -> int:
    """Write pairs as JSONL; returns the number written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def pair_from_dict(d: Any, *, path: str = "<pairs>", line: int | None = None) -> PreferencePair:
    """Validate one pair object (``PreferencePair.to_dict()``'s shape); errors name ``path``, ``line``
    and the field."""
    if not isinstance(d, dict):
        raise PairFormatError(path, f"expected an object, got {type(d).__name__}", line)
    for key in ("id", "kind", "chosen", "rejected"):
        if not isinstance(d.get(key), str) or not d[key].strip():
            raise PairFormatError(path, "missing or not a non-empty string", line, key)
    if d["kind"] not in KINDS:
        raise PairFormatError(path, f"must be one of {', '.join(KINDS)}, got {d['kind']!r}", line, "kind")
    prompt = d.get("prompt")
    if (not isinstance(prompt, list) or not prompt
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in prompt)):
        raise PairFormatError(path, "expected a non-empty list of {role, content} messages", line, "prompt")
    margin = d.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise PairFormatError(path, "expected a number", line, "margin")
    ids = {}
    for key in ("chosen_ids", "rejected_ids"):
        v = d.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise PairFormatError(path, "expected a list of strings", line, key)
        ids[key] = tuple(v)
    return PreferencePair(id=d["id"], kind=d["kind"],
                          prompt=tuple({"role": m["role"], "content": m["content"]} for m in prompt),
                          chosen=d["chosen"], rejected=d["rejected"], margin=float(margin),
                          chosen_ids=ids["chosen_ids"], rejected_ids=ids["rejected_ids"],
                          task=d.get("task", "") if isinstance(d.get("task", ""), str) else "")


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Read and validate a pairs JSONL file; errors name the file, line and field. Ids must be unique."""
    p = Path(path)
    if not p.is_file():
        raise PairFormatError(str(p), "no such file")
    pairs: list[PreferencePair] = []
    seen: dict[str, int] = {}
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PairFormatError(str(p), f"invalid JSON: {e.msg} (column {e.colno})", lineno) from None
            pair = pair_from_dict(obj, path=str(p), line=lineno)
            if pair.id in seen:
                raise PairFormatError(str(p), f"duplicate id {pair.id!r} (first on line {seen[pair.id]})", lineno,
                                      "id")
            seen[pair.id] = lineno
            pairs.append(pair)
    return pairs
