"""Preference pairs: students' scores of drafts → chosen/rejected pairs for DPO on the teacher.

Contract: :func:`select_pairs` ``(task, drafts, scores, seeds, config)`` returns a :class:`PairResult`:
the :class:`PreferencePair` objects (``prompt`` messages, ``chosen`` and ``rejected`` texts, ``kind``,
``margin``, the draft/question ids behind each side), what was skipped and why, and the numbers of the
signal (score spread, the drafts' answers, items). ``outcome`` is ``pairs``, or ``no_signal`` when no
pair passes: a result, not an error. :func:`build_pairs` returns just the pairs; :func:`write_pairs` /
:func:`read_pairs` keep them as JSONL in TRL's conversational preference format (``prompt``, ``chosen`` and
``rejected`` as messages, plus ids and margins: ``DPOTrainer`` loads the file as it is; plain-string
``chosen``/``rejected`` of older files are read too). Pure: no model, no I/O beyond the paths given.

Scores (:func:`score_table`): ``scores[draft_id]`` is an :class:`arte.pair_rules.ScoreEstimate` (score,
variance, the unit it was scored on, per-item outcomes when known) or plain ``(n_items, n_correct)``
counts, floats allowed, read as a binomial estimate. A draft is *scored* when ``n_items >= min_items``;
its ``s_r`` is the estimate's score (clipped to [0, 1]). ``s_q`` of a question = mean ``s_r`` of its
scored rationales. Drafts without a score, with too few items, or with non-finite values are left out
and counted by reason.

Noise (:mod:`arte.pair_rules`): a pair needs chosen to beat rejected beyond noise at the two-sided level
``confidence`` (0: point estimates), on top of ``min_margin``; equal scores never make a pair, and ties
are never broken by id or item count.

Question pairs (the paper: top vs bottom quartile of ``s_q``, on the question-generation prompt): the
scored questions are ranked by ``s_q`` (equal ``s_q`` by id: it only decides which of equal questions
are candidates, never a preference between them); ``T`` = the top ``quartile`` share (at least one),
``B`` = the bottom share. A question of ``T`` is kept when its ``s_q`` is above every ``s_q`` of ``B`` by
more than ``min_margin`` and its interval's lower bound is above every upper bound in ``B``; a
question's standard deviation is the mean of its rationales' (an upper bound whatever their
correlation: they share items). ``T`` (best first) and ``B`` (worst first) are cut into blocks of
``questions_per_block``; block ``i`` of ``T`` is chosen over block ``i`` of ``B``, for as many blocks as
both have. Prompt: :func:`arte.prompts.question_prompt` with ``n_seeds`` seeds, drawn as elicitation
draws them (:func:`arte.questions.draw_seeds`: stratified by label, rotating from pair to pair), asking
for as many questions as the block holds; completions: :func:`arte.prompts.question_block`. ``margin``
= mean ``s_q`` of chosen − of rejected.

The paper's *Original Teacher* (:func:`preferred_rationales`): no pair, no DPO: of each question's scored
rationales, the one the students scored best (the highest ``s_r``) becomes a training example; a shared best
score is settled by the drafts' order (first written) and counted as ``tied_best``, as that choice carries
no preference.

Rationale pairs (the paper: argmax vs argmin ``s_r`` per question, on the plain prompt): for each
question with at least two scored rationales, all scored on the same unit (same items), chosen = the
unique highest ``s_r``, rejected = the unique lowest. Skipped (and counted by reason): a tie (all equal),
a shared best or worst score (``tied_extreme``: picking one would break a tie by id), a difference not
above ``min_margin``, identical texts, a difference within noise (``paired`` comparison when both drafts'
per-item outcomes are known, else ``intervals``), rationales scored on different items. Prompt:
``rationale_prompt(task, question, "plain")``; completions: the rationales, ending in ``<ans>…</ans>``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from arte.drafts import Draft
from arte.errors import ConfigError, PairFormatError
from arte.jsonl import read_records
from arte.pair_rules import COMPARISONS, TIE_TOLERANCE, ScoreEstimate, binomial_estimate, separation, z_value
from arte.prompts import PLAIN_STYLE, demo_rationale, question_block, question_prompt, rationale_prompt
from arte.questions import draw_seeds
from arte.tasks import Example, Task

__all__ = ["PairConfig", "PreferencePair", "PairResult", "ScoreTable", "ScoreEstimate", "score_table",
           "select_pairs", "build_pairs", "write_pairs", "read_pairs", "pair_from_dict", "pair_counts", "KINDS",
           "OUTCOMES", "NO_SIGNAL", "SKIP_REASONS", "preferred_rationales"]

KINDS = ("question", "rationale")
OUTCOMES = ("pairs", "no_signal")     # of a pair selection, the pipeline, the align job, the experiment
NO_SIGNAL = "no_signal"
SKIP_REASONS = ("too_few_questions", "single_rationale", "different_items", "tie", "tied_extreme",
                "below_margin", "identical_texts", "below_noise")


@dataclass(frozen=True)
class PairConfig:
    """How scores become pairs.

    Args:
        kinds: which pairs to build: ``question``, ``rationale`` or both.
        min_items: a draft needs at least this many scored items (a float: noised counts) to count.
        min_margin: a pair needs chosen − rejected score strictly above this (0: any difference).
        confidence: two-sided level of the noise rule (:mod:`arte.pair_rules`); 0 compares point
            estimates (then only ``min_margin`` and ties stop a pair).
        comparison: ``paired`` (rationales scored on the same items with known per-item outcomes are
            compared item by item) or ``intervals`` (always interval separation).
        quartile: the top/bottom share of questions for question pairs (the paper: 0.25).
        questions_per_block: questions per chosen/rejected completion (the paper's prompt asks for 5).
        n_seeds: seed examples shown in the question prompt of a pair.
    """

    kinds: tuple[str, ...] = KINDS
    min_items: float = 1.0
    min_margin: float = 0.0
    confidence: float = 0.9
    comparison: str = "paired"
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
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0.0 <= self.confidence < 1.0:
            raise ConfigError("confidence", f"must be in [0, 1), got {self.confidence!r}")
        if self.comparison not in COMPARISONS:
            raise ConfigError("comparison", f"must be one of {', '.join(COMPARISONS)}, got {self.comparison!r}")
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
        """The JSONL record: TRL's conversational preference format (:meth:`to_trl`) plus our fields, so
        ``datasets.load_dataset("json", ...)`` feeds ``DPOTrainer`` the file as it is. The draft/question
        ids behind each side are ``chosen_from``/``rejected_from``: TRL 1.x tokenizes into columns named
        ``chosen_ids``/``rejected_ids`` (older files used those names; :func:`pair_from_dict` reads both)."""
        return {"id": self.id, "kind": self.kind, **self.to_trl(), "margin": self.margin,
                "chosen_from": list(self.chosen_ids), "rejected_from": list(self.rejected_ids), "task": self.task}

    def to_trl(self) -> dict[str, Any]:
        """TRL's conversational preference format: ``prompt`` messages, ``chosen`` and ``rejected`` as
        one assistant message each."""
        return {"prompt": [dict(m) for m in self.prompt],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


@dataclass
class ScoreTable:
    """Per-draft ``s_r`` (and its estimate), per-question ``s_q`` and the drafts left out, by reason."""

    s_r: dict[str, float]
    s_q: dict[str, float]
    items: dict[str, float]
    excluded: dict[str, int] = field(default_factory=dict)
    estimates: dict[str, ScoreEstimate] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"scored_drafts": len(self.s_r), "scored_questions": len(self.s_q), "excluded": dict(self.excluded)}


def _estimate(value: Any) -> ScoreEstimate | None:
    """A score as an estimate; None when it is not a usable number."""
    if isinstance(value, ScoreEstimate):
        return value
    try:
        n_items, n_correct = (float(x) for x in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(n_items) and math.isfinite(n_correct)) or n_items <= 0:
        return None
    return binomial_estimate(n_items, n_correct)


def score_table(drafts: Sequence[Draft], scores: Mapping[str, ScoreEstimate | tuple[float, float]],
                config: PairConfig = PairConfig()) -> ScoreTable:
    """Compute ``s_r`` and ``s_q`` (see the module docstring)."""
    s_r: dict[str, float] = {}
    items: dict[str, float] = {}
    estimates: dict[str, ScoreEstimate] = {}
    excluded: dict[str, int] = {}
    by_q: dict[str, list[float]] = {}

    def skip(reason: str) -> None:
        excluded[reason] = excluded.get(reason, 0) + 1

    for d in drafts:
        if d.id not in scores:
            skip("no_score")
            continue
        est = _estimate(scores[d.id])
        if est is None:
            skip("bad_score")
            continue
        if est.n_items < config.min_items:
            skip("too_few_items")
            continue
        s_r[d.id], items[d.id], estimates[d.id] = est.score, est.n_items, est
        by_q.setdefault(d.question_id or d.id, []).append(est.score)
    s_q = {q: sum(v) / len(v) for q, v in by_q.items()}
    return ScoreTable(s_r, s_q, items, excluded, estimates)


def preferred_rationales(drafts: Sequence[Draft], scores: Mapping[str, ScoreEstimate | tuple[float, float]],
                         config: PairConfig = PairConfig()) -> tuple[list[Draft], dict[str, Any]]:
    """The Original Teacher's training records: per question (in draft order), its best-scored rationale
    (see the module docstring), and the counts: ``questions``, ``selected``, ``tied_best`` (questions whose
    best score is shared), ``single`` (questions with one scored rationale), ``excluded`` drafts by reason."""
    table = score_table(drafts, scores, config)
    by_q: dict[str, list[Draft]] = {}
    for d in drafts:
        if d.id in table.s_r:
            by_q.setdefault(d.question_id or d.id, []).append(d)
    out: list[Draft] = []
    tied = single = 0
    for group in by_q.values():
        best = max(table.s_r[d.id] for d in group)
        top = [d for d in group if table.s_r[d.id] >= best - TIE_TOLERANCE]
        single += len(group) == 1
        tied += len(group) > 1 and len(top) > 1
        out.append(top[0])
    return out, {"questions": len(by_q), "selected": len(out), "tied_best": tied, "single": single,
                 "mean_selected_score": round(sum(table.s_r[d.id] for d in out) / len(out), 6) if out else None,
                 "excluded": dict(table.excluded)}


@dataclass
class PairResult:
    """What :func:`select_pairs` made of the scores: the pairs, and everything needed to judge them.

    ``skipped``: per kind, how many candidates were skipped, by reason (:data:`SKIP_REASONS`);
    ``comparisons``: how many rationale comparisons each noise rule decided; ``criterion``: the rule's
    settings; ``signal``: drafts, scored drafts, questions, item counts, the spread of the scores, the
    drafts' answers and the drafts left out."""

    pairs: list[PreferencePair]
    skipped: dict[str, dict[str, int]]
    comparisons: dict[str, int]
    criterion: dict[str, Any]
    signal: dict[str, Any]

    @property
    def outcome(self) -> str:
        return "pairs" if self.pairs else NO_SIGNAL

    def describe(self) -> str:
        """One line for logs and summaries."""
        sig = self.signal
        sc, it = sig.get("scores"), sig.get("items")
        spread = (f"scores {sc['min']:.3f}-{sc['max']:.3f} ({sc['distinct']} distinct)" if sc else "no scores")
        items = "-" if not it else (f"{it['min']:g}" if it["min"] == it["max"] else f"{it['min']:g}-{it['max']:g}")
        skipped = "; ".join(f"{k}: " + ", ".join(f"{r} {n}" for r, n in v.items())
                            for k, v in self.skipped.items() if v) or "nothing"
        head = (f"{len(self.pairs)} pairs {pair_counts(self.pairs)}" if self.pairs
                else "no signal: no preference pair passes")
        rules = ", ".join(f"{n} {r}" for r, n in self.comparisons.items() if n) or "none"
        return (f"{head} (confidence {self.criterion['confidence']}; rationale comparisons: {rules}): "
                f"{sig['scored_drafts']} of {sig['drafts']} drafts scored, {sig['questions']} questions, "
                f"{items} items each; {spread}; answers {sig['answers']}; skipped {skipped}")

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "n_pairs": len(self.pairs), "counts": pair_counts(self.pairs),
                "skipped": {k: dict(v) for k, v in self.skipped.items()}, "comparisons": dict(self.comparisons),
                "criterion": dict(self.criterion), "signal": self.signal, "reason": self.describe()}


def _signal(drafts: Sequence[Draft], table: ScoreTable) -> dict[str, Any]:
    scores = list(table.s_r.values())
    items = list(table.items.values())
    ranked = sorted(Counter(d.answer for d in drafts).items(), key=lambda kv: (-kv[1], kv[0]))
    answers = dict(ranked[:10])
    if len(ranked) > 10:   # free-form tasks: one answer per draft
        answers["(other answers)"] = sum(n for _, n in ranked[10:])
    return {"drafts": len(drafts), "scored_drafts": len(scores), "questions": len(table.s_q),
            "items": {"min": min(items), "max": max(items)} if items else None,
            "scores": {"min": round(min(scores), 6), "max": round(max(scores), 6),
                       "mean": round(sum(scores) / len(scores), 6), "spread": round(max(scores) - min(scores), 6),
                       "distinct": len({round(s, 9) for s in scores})} if scores else None,
            "answers": answers,
            "excluded": dict(table.excluded)}


class _Skips:
    def __init__(self) -> None:
        self.by_kind: dict[str, dict[str, int]] = {k: {} for k in KINDS}

    def __call__(self, kind: str, reason: str) -> None:
        self.by_kind[kind][reason] = self.by_kind[kind].get(reason, 0) + 1


def _question_pairs(task: Task, drafts: Sequence[Draft], table: ScoreTable, seeds: Sequence[Example],
                    config: PairConfig, z: float, skip: _Skips) -> list[PreferencePair]:
    text: dict[str, str] = {}
    sds: dict[str, list[float]] = {}
    for d in drafts:
        q = d.question_id or d.id
        text.setdefault(q, d.question)
        if d.id in table.estimates:
            sds.setdefault(q, []).append(table.estimates[d.id].sd)
    ranked = sorted(table.s_q, key=lambda q: (-table.s_q[q], q))
    if len(ranked) < 2:
        skip("question", "too_few_questions")
        return []
    sd_q = {q: sum(v) / len(v) for q, v in sds.items()}
    k = max(1, int(len(ranked) * config.quartile))
    bottom = ranked[::-1][:k]                       # worst first
    best_bottom = max(table.s_q[q] for q in bottom)
    high_bottom = max(table.s_q[q] + z * sd_q[q] for q in bottom)
    top = []
    for q in ranked[:k]:
        if q in bottom:
            continue
        if table.s_q[q] - best_bottom <= TIE_TOLERANCE:
            skip("question", "tie")
        elif table.s_q[q] - best_bottom <= config.min_margin:
            skip("question", "below_margin")
        elif table.s_q[q] - z * sd_q[q] <= high_bottom:
            skip("question", "below_noise")
        else:
            top.append(q)
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
            prompt=tuple(question_prompt(task, draw_seeds(seeds, config.n_seeds, 0, i), n)),
            chosen=question_block([text[q] for q in tb]), rejected=question_block([text[q] for q in bb]),
            margin=round(margin, 6), chosen_ids=tuple(tb), rejected_ids=tuple(bb), task=task.name))
    return pairs


def _rationale_pairs(task: Task, drafts: Sequence[Draft], table: ScoreTable, config: PairConfig, z: float,
                     skip: _Skips, comparisons: dict[str, int]) -> list[PreferencePair]:
    by_q: dict[str, list[Draft]] = {}
    for d in drafts:
        if d.id in table.s_r:
            by_q.setdefault(d.question_id or d.id, []).append(d)
    pairs = []
    for qid in sorted(by_q):
        group = by_q[qid]
        if len(group) < 2:
            skip("rationale", "single_rationale")
            continue
        est = {d.id: table.estimates[d.id] for d in group}
        if len({e.unit for e in est.values()}) > 1:   # different items: argmax/argmin would compare them
            skip("rationale", "different_items")
            continue
        hi, lo = max(e.score for e in est.values()), min(e.score for e in est.values())
        best = [d for d in group if est[d.id].score >= hi - TIE_TOLERANCE]
        worst = [d for d in group if est[d.id].score <= lo + TIE_TOLERANCE]
        if hi - lo <= TIE_TOLERANCE:
            skip("rationale", "tie")
            continue
        if len(best) > 1 or len(worst) > 1:
            skip("rationale", "tied_extreme")
            continue
        if hi - lo <= config.min_margin:
            skip("rationale", "below_margin")
            continue
        (b,), (w,) = best, worst
        chosen, rejected = demo_rationale(b), demo_rationale(w)
        if chosen == rejected:
            skip("rationale", "identical_texts")
            continue
        beats, rule = separation(est[b.id], est[w.id], z, config.comparison)
        comparisons[rule] = comparisons.get(rule, 0) + 1
        if not beats:
            skip("rationale", "below_noise")
            continue
        pairs.append(PreferencePair(
            id=f"rpair-{qid}", kind="rationale", prompt=tuple(rationale_prompt(task, b.question, PLAIN_STYLE)),
            chosen=chosen, rejected=rejected, margin=round(hi - lo, 6), chosen_ids=(b.id,),
            rejected_ids=(w.id,), task=task.name))
    return pairs


def select_pairs(task: Task, drafts: Sequence[Draft], scores: Mapping[str, ScoreEstimate | tuple[float, float]],
                 seeds: Sequence[Example], config: PairConfig = PairConfig()) -> PairResult:
    """Question pairs then rationale pairs, with what was skipped and the signal's numbers (see the module
    docstring). The server's align job, the pipeline and ``arte pairs`` call it by this name."""
    if "question" in config.kinds and not seeds:
        raise ConfigError("seeds", "question pairs need the seed examples of the question prompt")
    table = score_table(drafts, scores, config)
    z = z_value(config.confidence)
    skip = _Skips()
    comparisons = {c: 0 for c in COMPARISONS}
    pairs: list[PreferencePair] = []
    if "question" in config.kinds:
        pairs += _question_pairs(task, drafts, table, seeds, config, z, skip)
    if "rationale" in config.kinds:
        pairs += _rationale_pairs(task, drafts, table, config, z, skip, comparisons)
    criterion = {"confidence": config.confidence, "z": round(z, 4), "comparison": config.comparison,
                 "min_margin": config.min_margin, "min_items": config.min_items}
    return PairResult(pairs, {k: v for k, v in skip.by_kind.items() if k in config.kinds}, comparisons,
                      criterion, _signal(drafts, table))


def build_pairs(task: Task, drafts: Sequence[Draft], scores: Mapping[str, ScoreEstimate | tuple[float, float]],
                seeds: Sequence[Example], config: PairConfig = PairConfig()) -> list[PreferencePair]:
    """Just the pairs of :func:`select_pairs`."""
    return select_pairs(task, drafts, scores, seeds, config).pairs


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


def _completion(value: Any, path: str, line: int | None, key: str) -> str:
    """The text of ``chosen``/``rejected``: one assistant message (TRL's conversational format, what
    :meth:`PreferencePair.to_dict` writes) or a plain string (files written before)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            raise PairFormatError(path, f"the message's role must be assistant, got {value[0].get('role')!r}",
                                  line, key)
        value = value[0].get("content")
    elif isinstance(value, list):
        raise PairFormatError(path, f"expected one assistant message, got a list of {len(value)}", line, key)
    if not isinstance(value, str) or not value.strip():
        raise PairFormatError(path, "missing or not a non-empty string (or one assistant message)", line, key)
    return value


def pair_from_dict(d: Any, *, path: str = "<pairs>", line: int | None = None) -> PreferencePair:
    """Validate one pair object (``PreferencePair.to_dict()``'s shape; ``chosen``/``rejected`` as plain
    strings too, as older files have them); errors name ``path``, ``line`` and the field."""
    if not isinstance(d, dict):
        raise PairFormatError(path, f"expected an object, got {type(d).__name__}", line)
    for key in ("id", "kind"):
        if not isinstance(d.get(key), str) or not d[key].strip():
            raise PairFormatError(path, "missing or not a non-empty string", line, key)
    texts = {key: _completion(d.get(key), path, line, key) for key in ("chosen", "rejected")}
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
    for key, old in (("chosen_from", "chosen_ids"), ("rejected_from", "rejected_ids")):
        field_name = key if key in d else old
        v = d.get(field_name, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise PairFormatError(path, "expected a list of strings", line, field_name)
        ids[old] = tuple(v)
    return PreferencePair(id=d["id"], kind=d["kind"],
                          prompt=tuple({"role": m["role"], "content": m["content"]} for m in prompt),
                          chosen=texts["chosen"], rejected=texts["rejected"], margin=float(margin),
                          chosen_ids=ids["chosen_ids"], rejected_ids=ids["rejected_ids"],
                          task=d.get("task", "") if isinstance(d.get("task", ""), str) else "")


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Read and validate a pairs JSONL file; errors name the file, line and field. Ids must be unique."""
    return read_records(path, pair_from_dict, PairFormatError)
