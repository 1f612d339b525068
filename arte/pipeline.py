"""The offline ARTE pipeline on files in a work directory, resumable by stage.

Contract: :class:`Pipeline` runs ``draft → score → pairs → align → tailor`` for one task, one student and
one teacher, each stage reading the previous stage's files and writing its own::

    work_dir/
      pipeline.json        state: per stage its fingerprint, seconds and summary
      drafts.jsonl         draft:  arte.drafts format (elicit_drafts)
      drafts.report.json   draft:  question/draft rejections and repairs
      scores.json          score:  {"format", "task", "mode", "items", "item_ids",
                                    "scores": [{draft_id, n_items, n_correct, outcomes}]}
      selection.json       pairs:  with ``select_items`` k > 0, the IRT item selection (arte.irt.choose_items)
      pairs.jsonl          pairs:  arte.pairs format (select_pairs); empty when the signal makes no pair
      adapter/             align:  PEFT LoRA adapter + arte_align.json (align)
      tailored/            tailor: dataset.jsonl + manifest.json (tailor_dataset)

A stage is skipped when its recorded fingerprint (sha256 of its config, the task split and the sha256 of
its input files) matches and its outputs exist; otherwise it runs, and so does every later stage whose
inputs changed. ``force`` re-runs the named stages. Models are opened lazily through the callables the
shell passes (``open_teacher(adapter_dir or None)``, ``open_student()``), only for stages that run, and
closed after. Pure otherwise: files only under ``work_dir``.

No signal: when the scores make no preference pair (every rationale ties, differences within noise, too
few drafts), the ``pairs`` stage records ``outcome: no_signal`` with the numbers
(:meth:`arte.pairs.PairResult.to_dict`: score spread, the drafts' answers, items, what was skipped and
why) and the later stages stop cleanly: :meth:`Pipeline.run` returns ``outcome: no_signal`` with that
``reason`` and ``signal``, and marks ``align`` and ``tailor`` as ``stopped``. It is a result, not an error.
IRT item selection (``select_items`` k > 0; the paper's step, with the drafts as respondents): the ``pairs``
stage fits 2PL on the draft × item correctness matrix of the scores file, keeps the top-k validation items
by |discrimination| with a label-balance check (:func:`arte.irt.choose_items`, labels of the validation
items), writes ``selection.json`` and judges the drafts on the kept items only (:meth:`Pipeline.pair_scores`:
the pairs, and the Original Teacher's selection in ``arte experiment``). Changing k reruns ``pairs``, not
``score``. :meth:`Pipeline.branch` starts a pipeline that reuses this one's drafts and scores with other
pair settings (the experiment's Question Only / Rationale Only ablations).

The scores file keeps each draft's per-item outcomes (``"0110…"``, in ``item_ids`` order) so that the
rationales of a question, scored on the same items, are compared item by item (:mod:`arte.pair_rules`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from arte.dpo import METADATA_FILE, AlignConfig, align
from arte.drafts import read_drafts, write_drafts
from arte.elicit import ElicitConfig, elicit_drafts
from arte.errors import ConfigError, DraftFormatError
from arte.irt import choose_items
from arte.models import ModelRef, sha256_file
from arte.pair_rules import ScoreEstimate, binomial_estimate
from arte.pairs import NO_SIGNAL, PairConfig, pair_counts, read_pairs, select_pairs, write_pairs
from arte.progress import Progress
from arte.scoring import ScoringConfig, score_drafts
from arte.student import Student
from arte.tailor import DATASET_FILE, MANIFEST_FILE, TailorConfig, tailor_dataset
from arte.tasks import Task, TaskSplit, label_counts, label_of, split_task
from arte.teacher import Teacher

__all__ = ["PipelineConfig", "Pipeline", "STAGES", "write_scores", "read_scores", "read_score_estimates",
           "SCORES_FORMAT"]

log = logging.getLogger(__name__)

STAGES = ("draft", "score", "pairs", "align", "tailor")
SCORES_FORMAT = "arte-scores/1"


@dataclass(frozen=True)
class PipelineConfig:
    """Every stage's config, and how the task is split (seeds for the teacher, items for scoring).
    ``select_items``: keep the top-k validation items by IRT discrimination for the pairs (0: all items)."""

    elicit: ElicitConfig = field(default_factory=ElicitConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    tailor: TailorConfig = field(default_factory=TailorConfig)
    n_seeds: int = 3
    n_validation: int = 20
    split_seed: int = 0
    select_items: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.select_items, bool) or not isinstance(self.select_items, int) \
                or not 0 <= self.select_items < self.n_validation:
            raise ConfigError("select_items", f"must be 0 (off) or in [1, {self.n_validation - 1}] (fewer than the "
                                              f"validation items), got {self.select_items!r}")
        if self.n_seeds < 1:
            raise ConfigError("n_seeds", f"must be >= 1, got {self.n_seeds}")
        if self.n_validation < 1:
            raise ConfigError("n_validation", f"must be >= 1, got {self.n_validation}")


def write_scores(path: str | Path, task: str, mode: str, n_items: int,
                 scores: Mapping[str, tuple[float, float]], stats: Mapping[str, Any] | None = None, *,
                 outcomes: Mapping[str, Sequence[int]] | None = None, item_ids: Sequence[str] = ()) -> None:
    """Write per-draft scores as JSON (the file ``arte score`` writes and ``arte pairs`` reads), with each
    draft's per-item ``outcomes`` (a string of 0/1 in ``item_ids`` order) when given."""
    out = outcomes or {}
    rows = []
    for k, v in scores.items():
        row: dict[str, Any] = {"draft_id": k, "n_items": v[0], "n_correct": v[1]}
        if k in out:
            row["outcomes"] = "".join("1" if o else "0" for o in out[k])
        rows.append(row)
    doc = {"format": SCORES_FORMAT, "task": task, "mode": mode, "items": n_items, "item_ids": list(item_ids),
           "scores": rows, "stats": dict(stats or {})}
    Path(path).write_text(json.dumps(doc, indent=1))


def _scores_doc(path: str | Path) -> tuple[Path, dict[str, Any]]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DraftFormatError(str(p), "no such file") from None
    except json.JSONDecodeError as e:
        raise DraftFormatError(str(p), f"invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("scores"), list):
        raise DraftFormatError(str(p), "expected an object with a list", None, "scores")
    return p, doc


def read_scores(path: str | Path) -> dict[str, tuple[float, float]]:
    """Read a scores file: {draft_id: (n_items, n_correct)}; errors name the file and the entry."""
    p, doc = _scores_doc(path)
    out: dict[str, tuple[float, float]] = {}
    for i, s in enumerate(doc["scores"]):
        if not isinstance(s, dict) or not isinstance(s.get("draft_id"), str):
            raise DraftFormatError(str(p), "expected {draft_id, n_items, n_correct}", i, "scores")
        vals = [s.get("n_items"), s.get("n_correct")]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in vals):
            raise DraftFormatError(str(p), "n_items and n_correct must be numbers", i, "scores")
        out[s["draft_id"]] = (float(vals[0]), float(vals[1]))
    return out


def read_score_estimates(path: str | Path) -> dict[str, ScoreEstimate]:
    """Read a scores file as :class:`~arte.pair_rules.ScoreEstimate` per draft: binomial, with the per-item
    outcomes where the file has them (they must be 0/1, one per item, as many 1s as ``n_correct``).
    Every draft of one file was scored on the same items."""
    counts = read_scores(path)
    p, doc = _scores_doc(path)
    out: dict[str, ScoreEstimate] = {}
    for i, s in enumerate(doc["scores"]):
        n, c = counts[s["draft_id"]]
        raw = s.get("outcomes")
        if raw is not None and not (isinstance(raw, str) and set(raw) <= {"0", "1"} and len(raw) == n
                                    and raw.count("1") == c):
            raise DraftFormatError(str(p), f"outcomes must be {n:g} characters 0/1 with {c:g} ones", i, "scores")
        if n <= 0:
            raise DraftFormatError(str(p), "n_items must be > 0", i, "scores")
        out[s["draft_id"]] = binomial_estimate(n, c, outcomes=None if raw is None else [int(x) for x in raw])
    return out


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class Pipeline:
    """One task's offline ARTE run in ``work_dir`` (see the module docstring).

    Args:
        work_dir: where every file goes (created).
        task: the task; split into seeds and validation items by ``config``.
        config: the stages' configs.
        teacher_model: the teacher's base model (aligned by the ``align`` stage).
        open_teacher: opens the teacher, with the PEFT adapter in the given directory, or bare for None.
        open_student: opens the student that scores drafts.
        identity: strings that identify the models/backends, mixed into fingerprints.
        convert_dir: cache of GGUF→HF conversions for ``align``.
        progress: ``progress(stage, done, total)``; stages are prefixed by the pipeline stage.
    """

    def __init__(self, work_dir: str | Path, task: Task, config: PipelineConfig, *, teacher_model: ModelRef,
                 open_teacher: Callable[[Path | None], Teacher], open_student: Callable[[], Student],
                 identity: Mapping[str, str] | None = None, convert_dir: str | Path | None = None,
                 progress: Progress | None = None) -> None:
        self.work = Path(work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.task = task
        self.config = config
        self.teacher_model = teacher_model
        self.open_teacher = open_teacher
        self.open_student = open_student
        self.identity = dict(identity or {})
        self.convert_dir = convert_dir
        self.progress = progress
        self.split: TaskSplit = split_task(task, seed=config.split_seed, n_seeds=config.n_seeds,
                                           validation=config.n_validation)
        self.state_path = self.work / "pipeline.json"
        self.state: dict[str, Any] = self._load_state()

    # ---- files --------------------------------------------------------------------------------------

    @property
    def paths(self) -> dict[str, Path]:
        w = self.work
        return {"drafts": w / "drafts.jsonl", "drafts_report": w / "drafts.report.json",
                "scores": w / "scores.json", "selection": w / "selection.json", "pairs": w / "pairs.jsonl",
                "adapter": w / "adapter",
                "dataset": w / "tailored" / DATASET_FILE, "manifest": w / "tailored" / MANIFEST_FILE}

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"stages": {}}

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        os.replace(tmp, self.state_path)

    def _file_sha(self, key: str) -> str | None:
        p = self.paths[key]
        if key == "adapter":
            p = p / "adapter_model.safetensors"
        if not p.is_file():
            return None
        if key == "scores":   # the scores, not the file: its stats hold timings that differ run to run
            return _sha(sorted((k, v.n_items, v.score, v.outcomes) for k, v in read_score_estimates(p).items()))
        return sha256_file(p)

    def _outputs(self, stage: str) -> list[Path]:
        p = self.paths
        return {"draft": [p["drafts"]], "score": [p["scores"]],
                "pairs": [p["pairs"]] + ([p["selection"]] if self.config.select_items else []),
                "align": [p["adapter"] / "adapter_model.safetensors", p["adapter"] / METADATA_FILE],
                "tailor": [p["dataset"], p["manifest"]]}[stage]

    def fingerprint(self, stage: str) -> str:
        """What a stage's result depends on: its config, the split, the models and its input files."""
        c = self.config
        split = {"seeds": [e.id for e in self.split.seeds], "validation": [e.id for e in self.split.validation],
                 "task": self.task.name}
        deps: dict[str, Any] = {
            "draft": {"elicit": asdict(c.elicit), "teacher": self.identity.get("teacher")},
            "score": {"scoring": asdict(c.scoring), "student": self.identity.get("student"),
                      "drafts": self._file_sha("drafts"), "outcomes": True},
            "pairs": {"pairs": asdict(c.pairs), "drafts": self._file_sha("drafts"),
                      "scores": self._file_sha("scores"), "select_items": c.select_items},
            "align": {"align": asdict(c.align), "model": asdict(self.teacher_model),
                      "pairs": self._file_sha("pairs")},
            "tailor": {"tailor": asdict(c.tailor), "teacher": self.identity.get("tailor_teacher"),
                       "adapter": self._file_sha("adapter")},
        }[stage]
        return _sha({"stage": stage, "split": split, **deps})

    def is_current(self, stage: str) -> bool:
        rec = self.state["stages"].get(stage)
        return (rec is not None and rec.get("fingerprint") == self.fingerprint(stage)
                and all(p.exists() for p in self._outputs(stage)))

    # ---- stages -------------------------------------------------------------------------------------

    def _progress(self, stage: str) -> Progress | None:
        if self.progress is None:
            return None
        outer = self.progress
        return lambda sub, done, total: outer(f"{stage}/{sub}", done, total)

    def _draft(self) -> dict[str, Any]:
        teacher = self.open_teacher(None)
        try:
            res = elicit_drafts(teacher, self.task, self.split.seeds, self.config.elicit, self._progress("draft"))
        finally:
            teacher.close()
        if not res.drafts:
            raise ConfigError("elicit", f"the teacher produced no usable drafts: {res.summary()}")
        write_drafts(self.paths["drafts"], res.drafts)
        summary = {**res.summary(), "labels": label_counts(res.drafts)}
        self.paths["drafts_report"].write_text(json.dumps(summary, indent=2))
        return summary

    def _score(self) -> dict[str, Any]:
        drafts = read_drafts(self.paths["drafts"])
        student = self.open_student()
        items = self.split.validation
        bar = self._progress("score")
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if bar is not None:
                bar("items", done[0], len(drafts) * len(items))

        try:
            res = score_drafts(student, self.task, drafts, items, self.config.scoring, progress=tick)
        finally:
            student.close()
        scores = {s.draft_id: (float(s.n_items), float(s.n_correct)) for s in res.scores}
        outcomes = {s.draft_id: [int(x) for x in row] for s, row in zip(res.scores, res.outcomes)}
        write_scores(self.paths["scores"], self.task.name, res.mode, len(items), scores, res.stats,
                     outcomes=outcomes, item_ids=res.item_ids)
        acc = [s.accuracy for s in res.scores]
        return {"drafts": len(scores), "items": len(items), "labels": label_counts(items), "mode": res.mode,
                "mean_accuracy": round(sum(acc) / len(acc), 4) if acc else None,
                "seconds": round(res.stats.get("seconds", 0.0), 3)}

    def _select(self) -> dict[str, Any]:
        """Fit 2PL on the scores' draft × item matrix and write ``selection.json`` (see the module docstring)."""
        drafts = read_drafts(self.paths["drafts"])
        _p, doc = _scores_doc(self.paths["scores"])
        estimates = read_score_estimates(self.paths["scores"])
        item_ids = list(doc.get("item_ids") or [])
        rows = [d for d in drafts if d.id in estimates and estimates[d.id].outcomes is not None]
        if not item_ids or len(rows) < 2 or any(len(estimates[d.id].outcomes or ()) != len(item_ids) for d in rows):
            raise ConfigError("select_items", "IRT selection needs the per-item outcomes of at least two drafts "
                                              "on the same items; rescore the drafts (stage score)")
        by_id = {e.id: e for e in self.split.validation}
        labels = [label_of(by_id[i]) for i in item_ids] if all(i in by_id for i in item_ids) else None
        k = self.config.select_items
        if k >= len(item_ids):
            record: dict[str, Any] = {"selected": item_ids, "n_items": len(item_ids), "n_drafts": len(rows),
                                      "note": f"k = {k} >= the {len(item_ids)} items scored: all kept"}
        else:
            record = choose_items([list(estimates[d.id].outcomes or ()) for d in rows], item_ids, k, labels,
                                  [d.question_id or d.id for d in rows])
        self.paths["selection"].write_text(json.dumps(record, indent=1))
        if record.get("balanced") is False:
            log.warning("IRT selection is not label-balanced: %s of %s", record["labels"], record["labels_of_all"])
        return record

    def pair_scores(self) -> dict[str, ScoreEstimate]:
        """The drafts' scores the pairs are judged on: the scores file, restricted to the IRT-selected items
        when ``select_items`` is on (after the ``pairs`` stage wrote ``selection.json``)."""
        scores = read_score_estimates(self.paths["scores"])
        if not self.config.select_items:
            return scores
        _p, doc = _scores_doc(self.paths["scores"])
        item_ids = list(doc.get("item_ids") or [])
        keep = [item_ids.index(i) for i in json.loads(self.paths["selection"].read_text())["selected"]]
        out = {}
        for draft_id, e in scores.items():
            sub = [(e.outcomes or ())[j] for j in keep]
            out[draft_id] = binomial_estimate(len(sub), sum(sub), unit=e.unit, outcomes=sub)
        return out

    def _pairs(self) -> dict[str, Any]:
        drafts = read_drafts(self.paths["drafts"])
        selection = self._select() if self.config.select_items else None
        scores = self.pair_scores()
        res = select_pairs(self.task, drafts, scores, self.split.seeds, self.config.pairs)
        write_pairs(self.paths["pairs"], res.pairs)   # empty without signal: the stage is done either way
        if not res.pairs:
            log.warning("pairs: %s", res.describe())
        out = {**pair_counts(res.pairs), **res.to_dict()}
        if selection is not None:
            out["selection"] = {k: v for k, v in selection.items() if k != "selected"} | {
                "kept": len(selection["selected"])}
        return out

    def branch(self, work_dir: str | Path, config: PipelineConfig) -> "Pipeline":
        """A pipeline in ``work_dir`` with ``config`` that starts from this one's drafts and scores (copied with
        their stage records, so they are current there when ``config`` drafts and scores alike); its
        ``pairs``, ``align`` and ``tailor`` stages are its own. Run ``draft`` and ``score`` here first."""
        for stage in ("draft", "score"):
            if not self.is_current(stage):
                raise ConfigError("stages", f"branch needs a current {stage!r} stage in {self.work}")
        out = Pipeline(work_dir, self.task, config, teacher_model=self.teacher_model, open_teacher=self.open_teacher,
                       open_student=self.open_student, identity=self.identity, convert_dir=self.convert_dir,
                       progress=self.progress)
        for key in ("drafts", "drafts_report", "scores"):
            if self.paths[key].is_file() and (not out.paths[key].is_file()
                                              or sha256_file(out.paths[key]) != sha256_file(self.paths[key])):
                shutil.copyfile(self.paths[key], out.paths[key])
        for stage in ("draft", "score"):
            out.state["stages"][stage] = dict(self.state["stages"][stage])
        out._save_state()
        return out

    def no_signal(self) -> dict[str, Any] | None:
        """The recorded ``pairs`` summary when it found no signal (later stages stop), else None."""
        summary = (self.state["stages"].get("pairs") or {}).get("summary") or {}
        return summary if summary.get("outcome") == NO_SIGNAL else None

    def _align(self) -> dict[str, Any]:
        pairs = read_pairs(self.paths["pairs"])
        res = align(self.teacher_model, pairs, self.config.align, self.paths["adapter"], self._progress("align"),
                    convert_dir=self.convert_dir)
        m = res.metadata
        return {"steps": m["steps"], "train_loss": m["train_loss"], "pairs": m["pairs"], "reward": m["reward"],
                "reward_margin": m["reward_margin"], "train_tokens": m["train_tokens"], "seconds": m["seconds"]}

    def _tailor(self) -> dict[str, Any]:
        teacher = self.open_teacher(self.paths["adapter"])
        try:
            res = tailor_dataset(teacher, self.task, self.split.seeds, self.config.tailor,
                                 self.paths["dataset"].parent, self._progress("tailor"))
        finally:
            teacher.close()
        m = res.manifest
        return {"n_examples": m["n_examples"], "sha256": m["sha256"], "counts": m["counts"], "labels": m["labels"]}

    def run(self, stages: Sequence[str] = STAGES, *, force: Sequence[str] = ()) -> dict[str, Any]:
        """Run ``stages`` in pipeline order, skipping current ones; returns the per-stage summaries."""
        unknown = [s for s in list(stages) + list(force) if s not in STAGES]
        if unknown:
            raise ConfigError("stages", f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
        run = {"draft": self._draft, "score": self._score, "pairs": self._pairs, "align": self._align,
               "tailor": self._tailor}
        t0 = time.perf_counter()
        report: dict[str, Any] = {}
        for stage in STAGES:
            if stage not in stages:
                continue
            stop = self.no_signal() if STAGES.index(stage) > STAGES.index("pairs") else None
            if stop is not None:
                report[stage] = {"skipped": True, "stopped": NO_SIGNAL, "seconds": 0.0,
                                 "summary": {"reason": stop["reason"]}}
                log.info("%s: stopped, no signal", stage)
                continue
            if stage not in force and self.is_current(stage):
                report[stage] = {"skipped": True, **self.state["stages"][stage]}
                log.info("%s: up to date, skipped", stage)
                continue
            fingerprint = self.fingerprint(stage)
            s0 = time.perf_counter()
            summary = run[stage]()
            rec = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - s0, 3), "summary": summary}
            self.state["stages"][stage] = rec
            self._save_state()
            report[stage] = {"skipped": False, **rec}
            log.info("%s: done in %.1fs", stage, rec["seconds"])
        pairs = (self.state["stages"].get("pairs") or {}).get("summary") or {}
        out = {"work_dir": str(self.work), "task": self.task.name, "labels": self.split.label_counts(),
               "outcome": pairs.get("outcome"), "stages": report, "seconds": round(time.perf_counter() - t0, 3),
               "files": {k: str(v) for k, v in self.paths.items()}}
        if pairs.get("outcome") == NO_SIGNAL:
            out.update(reason=pairs["reason"], signal=pairs["signal"])
        return out
