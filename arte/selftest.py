"""Does alignment follow preferences? Link (1) of ARTE measured with a planted preference.

Contract: :func:`alignment_selftest` ``(task, config, work_dir, open_teacher=…, align_pairs=…)`` returns a
:class:`SelftestResult`. It checks that DPO on preference pairs moves the teacher toward the drafts the
preference favours, on questions it was not aligned on; it says nothing about whether students learn
from the moved teacher (link 2).

Steps (every one the real code but the scorer):

1. Split the task (:func:`arte.tasks.split_task`): ``n_seeds`` seed examples prompt the teacher,
   ``n_heldout`` other examples are the held-out questions of the measurement.
2. The original teacher (``open_teacher(None)``) writes drafts (:func:`arte.elicit.elicit_drafts`), and
   rationales for the held-out questions on the plain prompt (the prompt of rationale pairs) at
   ``sample_temperature`` for each of ``sample_seeds`` sampling seeds. Rules on questions (``quantity``)
   sample question prompts shown held-out examples instead.
3. Thresholds left unset (``max_words``, ``answer_chars``) are set to the median of the original
   teacher's held-out samples, so that the property holds about half the time before alignment and
   can move either way. They are set before any alignment and recorded.
4. Per rule variant (:attr:`SelftestConfig.variants`: each rule ``planted``, the first rule also
   ``reversed`` and ``null``): the planted scorer (:func:`arte.planted.planted_scores`, written with
   :func:`arte.pipeline.write_scores` and read back with :func:`arte.pipeline.read_score_estimates`,
   as a student's scores are; or an injected ``scorer``, e.g. a fleet of devices through the server)
   scores the drafts; :func:`arte.pairs.select_pairs` makes pairs; ``align_pairs(pairs, out_dir,
   progress)`` trains an adapter (:func:`arte.dpo.align` in the shells); ``open_teacher(adapter_dir)``
   samples the held-out questions again with the same seeds.
5. Rate of the property per (sampling seed, held-out question): 0/1 for rationales, the share of the
   reply's questions for question rules. Lift = aligned rate − original rate, with the two-level
   bootstrap of :func:`arte.stats.bootstrap_ci` (questions paired, seeds resampled).

Verdict (:meth:`SelftestResult.verdict`): ``planted`` variants pass when the lift's interval is above 0,
``reversed`` when the lift is below 0, ``null`` when its interval contains 0. A variant whose scores make
no pair is ``no_signal``: not a pass, except for ``null`` (no pair from random scores: nothing moves).
Files: ``work_dir/drafts.jsonl``, ``work_dir/<variant>/scores.json``,
``pairs.jsonl``, ``adapter/``; nothing outside ``work_dir``.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from arte.drafts import Draft, write_drafts
from arte.elicit import ElicitConfig, ElicitResult, elicit_drafts, trim_rationale
from arte.errors import ConfigError
from arte.pair_rules import ScoreEstimate
from arte.pairs import NO_SIGNAL, PairConfig, PreferencePair, pair_counts, select_pairs, write_pairs
from arte.pipeline import read_score_estimates, write_scores
from arte.planted import MODE, RULES, PlantedRule, holds, planted_scores
from arte.progress import Progress, report
from arte.prompts import PLAIN_STYLE, question_prompt, rationale_prompt, seed_question
from arte.questions import draw_seeds, split_questions
from arte.stats import bootstrap_ci
from arte.tasks import Example, Task, split_task
from arte.teacher import Teacher

__all__ = ["SelftestConfig", "SelftestResult", "VariantResult", "Prepared", "alignment_selftest", "prepare",
           "run_variant", "offline_scorer", "rate_matrix", "Scorer", "AlignPairs"]

log = logging.getLogger(__name__)

Scorer = Callable[[Sequence[Draft], PlantedRule, np.random.Generator], Mapping[str, ScoreEstimate]]
AlignPairs = Callable[[Sequence[PreferencePair], Path, Progress | None], Mapping[str, Any]]


@dataclass(frozen=True)
class SelftestConfig:
    """What the self-test plants and how it measures.

    Args:
        rules: the planted properties (:data:`arte.planted.RULES`), each run as ``planted``; the first is
            also run ``reversed`` and ``null``.
        strength, base, noise: the planted scorer's rates (:class:`arte.planted.PlantedRule`).
        max_words, answer_chars: rule thresholds; None: the median of the original teacher's samples.
        n_items: items each draft is scored on.
        n_heldout: held-out questions (task examples the teacher never saw) sampled before and after.
        sample_seeds: sampling seeds per held-out question.
        sample_temperature, sample_max_new_tokens: the sampling of held-out replies.
        n_seeds, split_seed: the task split (seed examples shown to the teacher).
        score_seed: the planted scorer's random draws.
        n_boot, level: the bootstrap interval of the lift.
        elicit: drafting (:class:`arte.elicit.ElicitConfig`).
        pairs: pair selection (:class:`arte.pairs.PairConfig`).
    """

    rules: tuple[str, ...] = ("short", "steps")
    strength: float = 0.6
    base: float = 0.5
    noise: float = 0.0
    max_words: int | None = None
    answer_chars: int | None = None
    n_items: int = 20
    n_heldout: int = 8
    sample_seeds: int = 3
    sample_temperature: float = 1.0
    sample_max_new_tokens: int = 128
    n_seeds: int = 6
    split_seed: int = 0
    score_seed: int = 0
    n_boot: int = 2000
    level: float = 0.95
    elicit: ElicitConfig = field(default_factory=lambda: ElicitConfig(n_questions=24, rationale_max_new_tokens=128,
                                                                      rationale_temperature=1.0))
    pairs: PairConfig = field(default_factory=lambda: PairConfig(kinds=("rationale",)))

    def __post_init__(self) -> None:
        if isinstance(self.rules, list):   # configs built from JSON
            object.__setattr__(self, "rules", tuple(self.rules))
        if isinstance(self.rules, str) or not self.rules or any(r not in RULES for r in self.rules):
            raise ConfigError("rules", f"must be a non-empty tuple of {', '.join(RULES)}, got {self.rules!r}")
        if len(set(self.rules)) != len(self.rules):
            raise ConfigError("rules", "a rule is listed twice")
        for name in ("n_items", "n_heldout", "sample_seeds", "sample_max_new_tokens", "n_seeds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {v!r}")
        if not 0.0 <= self.sample_temperature <= 10.0:
            raise ConfigError("sample_temperature", f"must be in [0, 10], got {self.sample_temperature}")
        PlantedRule(self.rules[0], strength=self.strength, base=self.base, noise=self.noise,
                    max_words=self.max_words or 1, answer_chars=self.answer_chars or 1)   # validates the rates

    @property
    def variants(self) -> list[tuple[str, str]]:
        """(rule, variant) in run order."""
        return [(r, "planted") for r in self.rules] + [(self.rules[0], "reversed"), (self.rules[0], "null")]


@dataclass
class VariantResult:
    """One planted rule variant: its pairs, the alignment, and the rule's rate before and after."""

    rule: PlantedRule
    outcome: str                       # "pairs" or "no_signal"
    pairs: dict[str, Any]
    original_rate: float
    aligned_rate: float | None = None
    lift: dict[str, Any] | None = None   # arte.stats.Interval.to_dict()
    align: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool | None:
        """See :meth:`SelftestResult.verdict`; None without a lift, except for ``null``: random scores that
        make no pair leave the teacher as it was, which is what ``null`` checks."""
        if self.lift is None:
            return True if self.rule.variant == "null" and self.outcome == NO_SIGNAL else None
        if self.rule.variant == "planted":
            return self.lift["low"] > 0
        if self.rule.variant == "reversed":
            return self.lift["estimate"] < 0
        return self.lift["low"] <= 0 <= self.lift["high"]

    @property
    def heldout_reward_accuracy(self) -> float | None:
        held = (self.align.get("reward") or {}).get("held_out") or {}
        return ((held.get("after") or {}).get("accuracy")) if held.get("pairs") else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.rule.name, "rule": self.rule.rule, "variant": self.rule.variant,
                "target": self.rule.target, "describe": self.rule.describe(), "outcome": self.outcome,
                "pairs": self.pairs, "original_rate": self.original_rate, "aligned_rate": self.aligned_rate,
                "lift": self.lift, "passed": self.passed, "heldout_reward_accuracy": self.heldout_reward_accuracy,
                "align": self.align, "seconds": round(self.seconds, 3)}


@dataclass
class SelftestResult:
    """Every variant's result, the drafts' summary and the thresholds that were set."""

    variants: list[VariantResult]
    drafts: dict[str, Any]
    thresholds: dict[str, int]
    heldout: list[str]
    config: dict[str, Any]
    seconds: float

    def verdict(self) -> str:
        """``pass`` when every variant passed (see the module docstring), else ``fail``."""
        return "pass" if self.variants and all(v.passed for v in self.variants) else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict(), "variants": [v.to_dict() for v in self.variants],
                "drafts": self.drafts, "thresholds": self.thresholds, "heldout": self.heldout,
                "config": self.config, "seconds": round(self.seconds, 3)}


def offline_scorer(work_dir: Path, task_name: str, n_items: int) -> Scorer:
    """The planted scorer as a student's scores enter the offline pipeline: a scores file
    (:func:`arte.pipeline.write_scores`, per-item outcomes included) read back as estimates."""

    def score(drafts: Sequence[Draft], rule: PlantedRule, rng: np.random.Generator) -> Mapping[str, ScoreEstimate]:
        res = planted_scores(drafts, rule, n_items, rng)
        path = work_dir / rule.name / "scores.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_scores(path, task_name, MODE, n_items,
                     {s.draft_id: (float(s.n_items), float(s.n_correct)) for s in res.scores}, res.stats,
                     outcomes={s.draft_id: list(row) for s, row in zip(res.scores, res.outcomes)},
                     item_ids=res.item_ids)
        return read_score_estimates(path)

    return score


def _rationale_samples(teacher: Teacher, task: Task, questions: Sequence[str], config: SelftestConfig,
                       progress: Progress | None, stage: str) -> list[list[str]]:
    """``replies[seed][question]``: plain-prompt rationales, trimmed after the first answer tag."""
    convs = [rationale_prompt(task, q, PLAIN_STYLE) for q in questions]
    out = []
    for s in range(config.sample_seeds):
        report(progress, stage, s, config.sample_seeds)
        texts = teacher.chat(convs, temperature=config.sample_temperature,
                             max_new_tokens=config.sample_max_new_tokens, seed=10_000 + s)
        out.append([trim_rationale(t) for t in texts])
    report(progress, stage, config.sample_seeds, config.sample_seeds)
    return out


def _question_samples(teacher: Teacher, task: Task, heldout: Sequence[Example], config: SelftestConfig,
                      progress: Progress | None, stage: str) -> list[list[list[str]]]:
    """``questions[seed][prompt]``: the questions of question prompts shown held-out examples."""
    k = min(config.elicit.n_seeds, len(heldout))
    convs = [question_prompt(task, draw_seeds(heldout, k, 0, i), config.elicit.questions_per_prompt)
             for i in range(config.n_heldout)]
    out = []
    for s in range(config.sample_seeds):
        report(progress, stage, s, config.sample_seeds)
        texts = teacher.chat(convs, temperature=config.sample_temperature,
                             max_new_tokens=config.elicit.question_max_new_tokens, seed=20_000 + s)
        out.append([[b.strip() for b in split_questions(t)[0] if b.strip()] or [t] for t in texts])
    report(progress, stage, config.sample_seeds, config.sample_seeds)
    return out


@dataclass
class _Samples:
    rationales: list[list[str]] | None = None
    questions: list[list[list[str]]] | None = None


def _sample(teacher: Teacher, task: Task, questions: Sequence[str], heldout: Sequence[Example], targets: set[str],
            config: SelftestConfig, progress: Progress | None, stage: str) -> _Samples:
    s = _Samples()
    if "rationale" in targets:
        s.rationales = _rationale_samples(teacher, task, questions, config, progress, f"{stage}/rationales")
    if "question" in targets:
        s.questions = _question_samples(teacher, task, heldout, config, progress, f"{stage}/questions")
    return s


def rate_matrix(rule: PlantedRule, samples: _Samples) -> np.ndarray:
    """The property per (sampling seed, held-out question or prompt): 0/1, or a share of questions."""
    if rule.target == "rationale":
        assert samples.rationales is not None
        return np.array([[float(holds(rule, t)) for t in row] for row in samples.rationales])
    assert samples.questions is not None
    return np.array([[sum(holds(rule, q) for q in qs) / len(qs) for qs in row] for row in samples.questions])


def _median(values: Sequence[float], fallback: int) -> int:
    return max(1, int(round(statistics.median(values)))) if values else fallback


def _thresholds(config: SelftestConfig, samples: _Samples) -> dict[str, int]:
    """``max_words`` and ``answer_chars``: as configured, else the medians of the original samples."""
    texts = [t for row in (samples.rationales or []) for t in row]
    words = [len(t.split("<ans>")[0].split()) for t in texts]
    tags = [t.find("<ans>") for t in texts if "<ans>" in t]
    return {"max_words": config.max_words or _median(words, 40),
            "answer_chars": config.answer_chars or _median(tags, 200)}


@dataclass
class Prepared:
    """What every variant shares: the split, the held-out questions, the drafts, the original teacher's
    samples and the thresholds (:func:`prepare`)."""

    task: Task
    config: SelftestConfig
    work: Path
    seeds: list[Example]
    heldout: list[Example]
    questions: list[str]
    drafts: list[Draft]
    drafts_summary: dict[str, Any]
    original: _Samples
    thresholds: dict[str, int]
    seconds: float

    def rule(self, rule: str, variant: str) -> PlantedRule:
        """The planted rule with this run's rates and thresholds."""
        c = self.config
        return PlantedRule(rule, variant, c.strength, c.base, c.noise, **self.thresholds)


def prepare(task: Task, config: SelftestConfig, work_dir: str | Path, *,
            open_teacher: Callable[[Path | None], Teacher], open_drafter: Callable[[], Teacher] | None = None,
            drafts: Sequence[Draft] | None = None, progress: Progress | None = None) -> Prepared:
    """Steps 1-3 of the module docstring: split, drafts, the original teacher's samples, thresholds.
    ``drafts`` (e.g. an earlier run's ``drafts.jsonl``) are used instead of eliciting new ones."""
    t0 = time.perf_counter()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    split = split_task(task, seed=config.split_seed, n_seeds=config.n_seeds, validation=config.n_heldout)
    heldout = list(split.validation)
    if len(heldout) < config.n_heldout:
        raise ConfigError("n_heldout", f"the task has only {len(heldout)} examples left for held-out questions")
    questions = [seed_question(task, e) for e in heldout]
    targets = {PlantedRule(r).target for r in config.rules}
    if drafts is not None:
        drafted = ElicitResult(list(drafts), [], {}, {}, {}, {"reused": True})
        if not drafts:
            raise ConfigError("drafts", "no drafts given")
        open_drafter = open_drafter or (lambda: open_teacher(None))   # sample the original below
    else:
        drafter = open_drafter() if open_drafter is not None else open_teacher(None)
        try:
            drafted = elicit_drafts(drafter, task, split.seeds, config.elicit, progress)
            if open_drafter is None:
                original = _sample(drafter, task, questions, heldout, targets, config, progress, "original")
        finally:
            drafter.close()
    if not drafted.drafts:
        raise ConfigError("elicit", f"the teacher produced no usable drafts: {drafted.summary()}")
    if open_drafter is not None:
        teacher = open_teacher(None)
        try:
            original = _sample(teacher, task, questions, heldout, targets, config, progress, "original")
        finally:
            teacher.close()
    write_drafts(work / "drafts.jsonl", drafted.drafts)
    thresholds = _thresholds(config, original)
    log.info("drafts: %d for %d questions; thresholds %s", len(drafted.drafts), len(drafted.questions), thresholds)
    summary = {**drafted.summary(), "kept": len(drafted.drafts)}
    summary["questions"] = summary["questions"] or len({d.question_id for d in drafted.drafts})
    return Prepared(task, config, work, list(split.seeds), heldout, questions, drafted.drafts, summary, original,
                    thresholds,
                    time.perf_counter() - t0)


def run_variant(prep: Prepared, rule: PlantedRule, *, open_teacher: Callable[[Path | None], Teacher],
                align_pairs: AlignPairs, scorer: Scorer, rng: np.random.Generator, out_dir: Path,
                progress: Progress | None = None) -> VariantResult:
    """Step 4-5 of the module docstring for one rule variant; files under ``out_dir``."""
    v0 = time.perf_counter()
    config, task = prep.config, prep.task
    base_rates = rate_matrix(rule, prep.original)
    # a question rule ties every rationale of a question: it can only make question pairs
    pair_cfg = replace(config.pairs, kinds=("question",)) if rule.target == "question" else config.pairs
    sel = select_pairs(task, prep.drafts, scorer(prep.drafts, rule, rng), prep.seeds, pair_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_pairs(out_dir / "pairs.jsonl", sel.pairs)
    pairs_info = {**pair_counts(sel.pairs), "total": len(sel.pairs),
                  "chosen_holds": _share_holds(rule, sel.pairs, "chosen"),
                  "rejected_holds": _share_holds(rule, sel.pairs, "rejected")}
    res = VariantResult(rule, sel.outcome, pairs_info, float(base_rates.mean()))
    if sel.outcome == NO_SIGNAL:
        log.warning("%s: no signal: %s", rule.name, sel.describe())
    else:
        bar = None if progress is None else (lambda s, d, t, n=rule.name: progress(f"align {n}/{s}", d, t))
        meta = align_pairs(sel.pairs, out_dir / "adapter", bar)
        res.align = {k: meta.get(k) for k in ("steps", "train_loss", "reward", "reward_margin", "pairs",
                                              "seconds") if k in meta}
        aligned_teacher = open_teacher(out_dir / "adapter")
        try:
            aligned = _sample(aligned_teacher, task, prep.questions, prep.heldout, {rule.target}, config, progress,
                              f"aligned {rule.name}")
        finally:
            aligned_teacher.close()
        after = rate_matrix(rule, aligned)
        res.aligned_rate = float(after.mean())
        res.lift = bootstrap_ci(after, base_rates, n_boot=config.n_boot, level=config.level,
                                seed=config.score_seed).to_dict()
    res.seconds = time.perf_counter() - v0
    return res


def alignment_selftest(task: Task, config: SelftestConfig, work_dir: str | Path, *,
                       open_teacher: Callable[[Path | None], Teacher], align_pairs: AlignPairs,
                       scorer: Scorer | None = None, open_drafter: Callable[[], Teacher] | None = None,
                       progress: Progress | None = None) -> SelftestResult:
    """Run the self-test (see the module docstring). ``scorer`` defaults to :func:`offline_scorer`;
    ``open_drafter`` (default: ``open_teacher(None)``) opens the teacher that writes the drafts, e.g. the
    same base model on a faster runtime: the before/after samples always come from ``open_teacher``, so
    that the original and the aligned teacher run on the same runtime."""
    t0 = time.perf_counter()
    prep = prepare(task, config, work_dir, open_teacher=open_teacher, open_drafter=open_drafter, progress=progress)
    score = scorer or offline_scorer(prep.work, task.name, config.n_items)
    results = [run_variant(prep, prep.rule(rule_name, variant), open_teacher=open_teacher, align_pairs=align_pairs,
                           scorer=score, rng=np.random.default_rng([config.score_seed, i]),
                           out_dir=prep.work / prep.rule(rule_name, variant).name, progress=progress)
               for i, (rule_name, variant) in enumerate(config.variants)]
    return SelftestResult(results, prep.drafts_summary, prep.thresholds, [e.id for e in prep.heldout],
                          asdict(config), time.perf_counter() - t0)


def _share_holds(rule: PlantedRule, pairs: Sequence[PreferencePair], side: str) -> float | None:
    """Share of the pairs whose chosen (or rejected) text has the property: the signal DPO is given."""
    if not pairs:
        return None
    texts = [p.chosen if side == "chosen" else p.rejected for p in pairs]
    if rule.target == "question":
        return sum(any(holds(rule, b) for b in split_questions(t)[0] or [t]) for t in texts) / len(texts)
    return sum(holds(rule, t) for t in texts) / len(texts)
