"""How ``arte experiment`` runs: the paper's comparison, task by task, with every step cached. For each task,
the student

1. **untuned** (the base model),
2. **original**: LoRA-fine-tuned on data the *unaligned* teacher wrote (the paper's "Original Teacher"),
   through the same selection and filter as ARTE's tailoring step (:func:`arte.tailor.tailor_dataset` with
   the same :class:`arte.tailor.TailorConfig`, questions, sampling seeds and runtime; only the adapter is
   missing),
3. **arte**: LoRA-fine-tuned on the data of :class:`arte.pipeline.Pipeline` (draft → student scoring on
   the validation split → pairs → DPO → tailored data),

is evaluated on the same holdout items (:func:`arte.evaluate.evaluate`) at each shot count, with the same
k-shot demonstrations for every condition: k label-balanced holdout items with a templated rationale, taken
out of the evaluated items (:func:`arte.evaluate.split_demos`); no condition trains on them and the teacher
never saw them. Both fine-tuned conditions train
on the same number of examples: the datasets are filtered to the examples that fit ``max_length`` and
then truncated, in file order, to the smaller one (or ``--train-size``). **The seed** varies the student's
SFT run: the LoRA initialization and the order of the training batches (:attr:`arte.sft.SFTConfig.seed`);
the teacher data are made once per task. Intervals: :mod:`arte.stats` via
:mod:`arte_cli.experiment_report`.

A task whose drafts give no preference pair (``no_signal``: every rationale ties, or no difference beyond
noise) or whose teacher data leave no training example (``no_data``) is reported with its ``outcome``,
the ``reason`` and the numbers (the pipeline's ``signal``, or the data counts), without training or
evaluation, and the experiment goes on with the other tasks. The others have ``outcome: compared``.

Every step is cached under ``--work``, keyed by everything it depends on (a rerun with the same settings
recomputes nothing; a changed setting reruns only the steps that depend on it)::

    <work>/<task>-<sha12 of the task file>/
      pipeline/                     arte.pipeline's resumable stages (its own fingerprints)
      original/                     dataset.jsonl + manifest.json of the unaligned teacher, key.json
      sft/<condition>-seed<k>/      LoRA SFT (adapter/, checkpoints), adapter.gguf, key.json
      eval/<condition>[-seed<k>].json   per-shot outcomes, with their key
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from arte.errors import ArteError, ConfigError

__all__ = ["ExperimentSettings", "run_experiment", "equalize", "SEED_VARIES"]

log = logging.getLogger(__name__)

SEED_VARIES = ("the student's LoRA SFT run: adapter initialization (torch seed) and training-batch order; "
               "the teacher data (pipeline and original-teacher tailoring) are made once per task")
Bars = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything that shapes the results (stored in the document). ``eval_mode``: one of
    :data:`arte.scoring.MODES`, or ``auto``: ``cot-choice`` (the student reasons, then the likeliest option)
    for multiple-choice tasks, ``generate`` otherwise; ``student_backend`` ``auto``: llama for a GGUF student
    (the adapter exported to GGUF), torch for an HF directory. ``pipeline``'s scoring mode follows
    ``eval_mode`` per task."""

    pipeline: Any                       # arte.pipeline.PipelineConfig
    sft: Any                            # arte.sft.SFTConfig (its seed is replaced by each run's)
    teacher: str = "default"
    student: str = "default"
    teacher_backend: str = "llama"
    student_backend: str = "auto"
    seeds: int = 3
    eval_mode: str = "auto"
    shots: tuple[int, ...] = (0, 3)
    holdout: int = 100
    train_size: int | None = None
    max_new_tokens: int = 128
    n_boot: int = 2000
    level: float = 0.95
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError("seeds", f"must be >= 1, got {self.seeds}")
        from arte.scoring import MODES

        if self.eval_mode not in ("auto", *MODES):
            raise ConfigError("eval_mode", f"must be auto or one of {', '.join(MODES)}, got {self.eval_mode!r}")
        if not self.shots or len(set(self.shots)) != len(self.shots) or min(self.shots) < 0:
            raise ConfigError("shots", f"must be distinct counts >= 0, got {self.shots!r}")
        if self.holdout < 1:
            raise ConfigError("holdout", f"must be >= 1, got {self.holdout}")
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError("train_size", f"must be >= 1, got {self.train_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def equalize(datasets: dict[str, list[Any]], limit: int | None = None) -> tuple[dict[str, list[Any]], int]:
    """The first ``n`` records of every dataset, ``n`` the smallest size (capped by ``limit``)."""
    n = min(len(v) for v in datasets.values())
    if limit is not None:
        n = min(n, limit)
    return {k: list(v[:n]) for k, v in datasets.items()}, n


class _Cache:
    """A JSON record at ``path`` that is valid only for ``key``."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def load(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return doc if doc.get("key") == self.key else None

    def save(self, doc: dict[str, Any]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({**doc, "key": self.key}, indent=1, default=str))
        os.replace(tmp, self.path)
        return doc


@dataclass
class _Models:
    """The resolved models, how each role opens them, and the strings that identify them in cache keys."""

    teacher: Any
    student: Any
    eval_backend: str
    open_teacher: Callable[[Path | None], Any]          # drafts (bare) and ARTE tailoring (with the adapter)
    open_plain_teacher: Callable[[Path | None], Any]    # the original teacher: the tailoring runtime, bare
    open_student: Callable[[], Any]
    identity: dict[str, str] = field(default_factory=dict)


def _models(s: ExperimentSettings) -> _Models:
    from arte.errors import ModelError
    from arte.models import resolve_model
    from arte_cli.home import model_dir
    from arte_cli.teacher import _student_opener, _teacher_opener

    teacher = resolve_model(s.teacher, model_dir())
    student = resolve_model(s.student, model_dir())
    backend = s.student_backend
    if backend == "auto":
        backend = "llama" if student.kind == "gguf" else "torch"
    if backend == "llama" and student.kind != "gguf":
        raise ModelError(f"--student-backend llama needs a GGUF student; {student.path} is an HF directory "
                         f"(use torch)")
    open_teacher, teacher_key = _teacher_opener(s.teacher, s.teacher_backend, None, None, s.threads)
    # The pipeline tailors with the torch teacher plus the DPO adapter; the original teacher runs there too.
    open_plain, plain_key = _teacher_opener(s.teacher, "torch", None, None, s.threads)
    open_student, student_key = _student_opener(s.student, backend, s.threads)
    return _Models(teacher, student, backend, open_teacher, open_plain, open_student,
                   {"teacher": teacher_key, "student": student_key, "tailor_teacher": plain_key})


def _timed(seconds: dict[str, float], name: str, t0: float) -> None:
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 2)


class _TaskRun:
    """One task's part of the experiment (see the module docstring)."""

    def __init__(self, task_path: Path, s: ExperimentSettings, m: _Models, work_root: Path, bars: Bars) -> None:
        from arte.models import sha256_file
        from arte.tasks import load_task

        self.s, self.m = s, m
        self.task = load_task(task_path)
        self.task_sha = sha256_file(task_path)
        self.work = work_root / f"{self.task.name}-{self.task_sha[:12]}"
        self.mode = s.eval_mode
        if self.mode == "auto":
            self.mode = "cot-choice" if self.task.kind == "multiple_choice" else "generate"
        if self.mode == "loglik" and self.task.kind != "multiple_choice":
            raise ConfigError("eval_mode", f"loglik needs a multiple-choice task; {self.task.name} is "
                                           f"{self.task.kind} (use auto, cot-choice or generate)")
        self.bars = lambda stage, done, total: bars(f"{self.task.name} {stage}", done, total)
        self.seconds: dict[str, float] = {}
        self.cached: list[str] = []

    # ---- teacher data -------------------------------------------------------------------------------

    def pipeline(self) -> Any:
        from arte.pipeline import Pipeline

        cfg = dataclasses.replace(self.s.pipeline, scoring=dataclasses.replace(self.s.pipeline.scoring,
                                                                                mode=self.mode))
        return Pipeline(self.work / "pipeline", self.task, cfg, teacher_model=self.m.teacher,
                        open_teacher=self.m.open_teacher, open_student=self.m.open_student,
                        identity=self.m.identity, convert_dir=_convert_dir(), progress=self.bars)

    def original_data(self, seeds: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
        """The unaligned teacher's tailored records and its manifest."""
        from arte.drafts import read_drafts
        from arte.tailor import DATASET_FILE, tailor_dataset

        out = self.work / "original"
        cfg = self.s.pipeline.tailor
        cache = _Cache(out / "key.json", _sha({"tailor": asdict(cfg), "teacher": self.m.identity["tailor_teacher"],
                                                "seeds": [e.id for e in seeds], "task": self.task_sha}))
        hit = cache.load()
        if hit is None or not (out / DATASET_FILE).is_file():
            teacher = self.m.open_plain_teacher(None)
            try:
                res = tailor_dataset(teacher, self.task, seeds, cfg, out,
                                     lambda st, d, t: self.bars(f"original/{st}", d, t))
            finally:
                teacher.close()
            hit = cache.save({"manifest": res.manifest})
        else:
            self.cached.append("original")
        records = read_drafts(out / DATASET_FILE) if (out / DATASET_FILE).stat().st_size else []
        return records, hit["manifest"]

    # ---- student ------------------------------------------------------------------------------------

    def train(self, condition: str, seed: int, records: Sequence[Any]) -> tuple[Path, Path | None, dict[str, Any]]:
        """LoRA SFT of the student on ``records`` with ``seed``: (PEFT adapter dir, GGUF adapter or None,
        the SFT summary)."""
        from arte.sft import run_sft

        sft = dataclasses.replace(self.s.sft, seed=seed)
        out = self.work / "sft" / f"{condition}-seed{seed}"
        gguf = out / "adapter.gguf" if self.m.eval_backend == "llama" else None
        cache = _Cache(out / "key.json", _sha({"student": self.m.identity["student"], "sft": sft.fingerprint(),
                                               "records": [r.to_dict() for r in records]}))
        adapter = out / "sft" / "adapter"
        done = cache.load()
        if done is not None and (adapter / "adapter_model.safetensors").is_file() and (gguf is None or gguf.is_file()):
            self.cached.append(f"sft/{condition}-seed{seed}")
            return adapter, gguf, done["sft"]
        shutil.rmtree(out, ignore_errors=True)   # checkpoints of other settings would be refused
        name = f"{condition} s{seed} train"
        peft_model, _tok, res = run_sft(self.m.student, records, self.task.instruction, sft, out / "sft",
                                        convert_dir=_convert_dir(),
                                        progress=lambda step, total, _loss: self.bars(name, step, total))
        if res.status != "done":
            raise ConfigError("sft", f"training of {condition} seed {seed} stopped early ({res.status})")
        model_config = peft_model.get_base_model().config.to_dict()
        del peft_model
        gc.collect()
        if gguf is not None:
            from arte.export import export_gguf_lora

            export_gguf_lora(adapter, gguf, model_config)
        summary = {k: v for k, v in res.to_dict().items() if k in ("steps", "tokens", "seconds")}
        summary["loss_first_last"] = [round(res.losses[0], 4), round(res.losses[-1], 4)] if res.losses else []
        cache.save({"sft": summary})
        return adapter, gguf, summary

    def evaluate(self, name: str, fmt: Any, items: Sequence[Any], demos: Sequence[Any],
                 adapter: Path | None, gguf: Path | None) -> dict[int, dict[str, Any]]:
        """Per shot count ``{"outcomes", "answers", "seconds"}`` of the student with the adapter (None: the
        bare student)."""
        from arte.evaluate import EvalConfig
        from arte.finetune import FinetuneConfig, evaluate_with
        from arte.models import sha256_file

        ev = EvalConfig(mode=self.mode, shots=tuple(self.s.shots), decide_on=self.s.shots[0],
                        max_new_tokens=self.s.max_new_tokens)
        weights = gguf if gguf is not None else (adapter / "adapter_model.safetensors" if adapter else None)
        cache = _Cache(self.work / "eval" / f"{name}.json", _sha({
            "student": self.m.identity["student"], "backend": self.m.eval_backend, "eval": asdict(ev),
            "adapter": sha256_file(weights) if weights else None, "items": [e.to_dict() for e in items],
            "demos": [d.to_dict() for d in demos], "instruction": self.task.instruction}))
        hit = cache.load()
        if hit is not None:
            self.cached.append(f"eval/{name}")
            return {int(k): v for k, v in hit["results"].items()}
        done = [0]

        def progress(_phase: str, n: int, total: int) -> None:
            done[0] += n
            self.bars(f"{name} eval", done[0], total)

        config = FinetuneConfig(eval=ev, backend=self.m.eval_backend, n_threads=self.s.threads)
        res = evaluate_with(self.m.student, self.m.eval_backend, gguf, adapter, fmt, self.task, items, demos,
                            config, _convert_dir(), progress, "eval")
        results = {k: {"outcomes": r.outcomes, "answers": r.answers, "seconds": round(r.seconds, 2)}
                   for k, r in res.items()}
        cache.save({"results": results})
        return results

    def training_data(self, fmt: Any, datasets: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        """Each condition's training records, equal in number (see the module docstring), and the counts;
        with none to train on, the counts carry the ``problem``."""
        from arte.sft_data import encode_records

        max_length = self.s.sft.max_length
        fit = {}
        for c, recs in datasets.items():
            too_long = set(encode_records(fmt, recs, max_length)[1])
            fit[c] = [r for r in recs if r.id not in too_long]
        data, n = equalize(fit, self.s.train_size)
        info: dict[str, Any] = {}
        if n == 0:
            empty = [c for c, v in fit.items() if not v]
            info["problem"] = (f"{self.task.name}: no usable training examples from the "
                               f"{' and '.join(empty) or 'capped'} teacher data; raise --tailor-questions or "
                               f"--sft-max-length, or lower --check-samples")
        info |= {"kept": {c: len(v) for c, v in datasets.items()}, "fit": {c: len(v) for c, v in fit.items()},
                "used": n, "dropped_too_long": {c: len(v) - len(fit[c]) for c, v in datasets.items()},
                "truncated": {c: len(v) - n for c, v in fit.items()},
                "identical": len({(r.question, r.rationale) for r in data["original"]}
                                 & {(r.question, r.rationale) for r in data["arte"]}),
                "note": f"both conditions train on {n} examples: each dataset filtered to the examples that fit "
                        f"{max_length} tokens, then cut to the smaller size in file order; 'identical' counts "
                        f"examples (question and rationale) the two datasets share"}
        return data, info

    # ---- the whole task ------------------------------------------------------------------------------

    def _not_compared(self, outcome: str, reason: str, stages: dict[str, Any], split: Any,
                      **numbers: Any) -> dict[str, Any]:
        """The record of a task that cannot be compared (``no_signal``, ``no_data``): why, with the numbers."""
        log.warning("task %s: %s: %s", self.task.name, outcome, reason)
        _timed(self.seconds, "total", self._t_task)
        return {"task": self.task.name, "source": str(self.task.source), "sha256": self.task_sha,
                "kind": self.task.kind, "eval_mode": self.mode, "outcome": outcome, "reason": reason, **numbers,
                "split": {"seeds": len(split.seeds), "validation": len(split.validation),
                          "holdout_available": len(split.holdout)},
                "pipeline": stages, "runs": [], "seconds": self.seconds,
                "compute_seconds": {"pipeline": round(sum(v["seconds"] for v in stages.values()), 1)},
                "cached": self.cached, "work_dir": str(self.work)}

    def run(self) -> dict[str, Any]:
        from arte.backends.hf import load_hf
        from arte.drafts import read_drafts
        from arte.evaluate import split_demos
        from arte.sft_data import ChatFormat
        from arte.tasks import label_counts

        from arte_cli.experiment_report import COMPARED, NO_DATA, NO_SIGNAL

        t_task = self._t_task = time.perf_counter()
        t0 = time.perf_counter()
        runner = self.pipeline()
        summary = runner.run()
        _timed(self.seconds, "pipeline", t0)
        self.cached += [f"pipeline/{k}" for k, v in summary["stages"].items() if v["skipped"] and "stopped" not in v]
        split = runner.split
        stages = {k: {"skipped": v["skipped"], "seconds": v["seconds"], "summary": v["summary"],
                      **({"stopped": v["stopped"]} if "stopped" in v else {})}
                  for k, v in summary["stages"].items()}
        if summary["outcome"] == NO_SIGNAL:
            return self._not_compared(NO_SIGNAL, summary["reason"], stages, split, signal=summary["signal"])
        if not split.holdout:
            raise ConfigError("holdout", f"task {self.task.name} has no items left for the holdout after "
                                         f"{len(split.seeds)} seeds and {len(split.validation)} validation items")
        demos, rest = split_demos(self.task, split.holdout, max(self.s.shots), seed=self.s.pipeline.split_seed)
        items = rest[:self.s.holdout]

        t0 = time.perf_counter()
        original, manifest = self.original_data(split.seeds)
        _timed(self.seconds, "original_teacher", t0)
        arte = read_drafts(runner.paths["dataset"]) if runner.paths["dataset"].stat().st_size else []

        model, tok = load_hf(self.m.student, convert_dir=_convert_dir())
        del model
        fmt = ChatFormat(tok, self.task.instruction)
        data, data_info = self.training_data(fmt, {"original": original, "arte": arte})
        if data_info["used"] == 0:
            return self._not_compared(NO_DATA, data_info["problem"], stages, split, data=data_info)

        runs: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        base = self.evaluate("untuned", fmt, items, demos, None, None)
        _timed(self.seconds, "eval", t0)
        runs += [{"condition": "untuned", "seed": None, "shots": k, **v} for k, v in base.items()]
        training: dict[str, Any] = {}
        for seed in range(self.s.seeds):
            for condition in ("original", "arte"):
                t0 = time.perf_counter()
                adapter, gguf, sft = self.train(condition, seed, data[condition])
                _timed(self.seconds, "sft", t0)
                training[f"{condition}-seed{seed}"] = sft
                t0 = time.perf_counter()
                res = self.evaluate(f"{condition}-seed{seed}", fmt, items, demos, adapter, gguf)
                _timed(self.seconds, "eval", t0)
                runs += [{"condition": condition, "seed": seed, "shots": k, **v} for k, v in res.items()]
        _timed(self.seconds, "total", t_task)
        # what the steps took when they ran (cached ones included; model loading excluded)
        compute = {"pipeline": sum(v["seconds"] for v in summary["stages"].values()),
                   "original_teacher": manifest["seconds"],
                   "sft": sum(v["seconds"] for v in training.values()),
                   "eval": sum(r["seconds"] for r in runs)}
        chance = (sum(1 / len(e.choices) for e in items) / len(items)) if self.task.kind == "multiple_choice" else 0.0
        return {"task": self.task.name, "source": str(self.task.source), "sha256": self.task_sha,
                "kind": self.task.kind, "eval_mode": self.mode, "outcome": COMPARED, "chance": round(chance, 4),
                "holdout_ids": [e.id for e in items], "demo_ids": [d.id for d in demos],
                "split": {"seeds": len(split.seeds), "validation": len(split.validation),
                          "holdout_available": len(split.holdout)},
                "labels": {"seeds": label_counts(split.seeds), "validation": label_counts(split.validation),
                           "demos": label_counts(demos), "holdout": label_counts(items),
                           "original": label_counts(data["original"]), "arte": label_counts(data["arte"])},
                "data": data_info, "pipeline": stages, "training": training, "runs": runs,
                "seconds": self.seconds, "compute_seconds": {k: round(v, 1) for k, v in compute.items()},
                "cached": self.cached, "work_dir": str(self.work)}


def _convert_dir() -> Path:
    from arte_cli.home import convert_dir

    return convert_dir()


def run_experiment(task_paths: Sequence[Path], s: ExperimentSettings, work: Path, bars: Bars) -> dict[str, Any]:
    """Run every task (see the module docstring) and return the result document
    (:mod:`arte_cli.experiment_report`)."""
    from arte_cli.experiment_report import COMPARED, FORMAT, summarize

    t0 = time.perf_counter()
    m = _models(s)
    tasks = []
    for path in task_paths:
        try:
            t = _TaskRun(path, s, m, work, bars).run()
        except ArteError:
            log.error("task %s failed; the steps it finished stay cached under %s for a rerun", path, work)
            raise
        if t["outcome"] == COMPARED:
            t.update(summarize(t["runs"], s.shots, n_boot=s.n_boot, level=s.level, seed=0))
        tasks.append(t)
    return {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {**s.to_dict(), "tasks": [str(p) for p in task_paths]},
            "models": {"teacher": m.identity["teacher"], "tailor_teacher": m.identity["tailor_teacher"],
                       "student": m.identity["student"], "eval_backend": m.eval_backend},
            "seed_varies": SEED_VARIES,
            "bootstrap": {"n_boot": s.n_boot, "level": s.level, "seed": 0,
                          "method": "percentile bootstrap, items resampled jointly for paired conditions, "
                                    "seed runs resampled per condition (arte.stats)"},
            "tasks": tasks, "seconds": round(time.perf_counter() - t0, 1)}

