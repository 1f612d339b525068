"""How ``arte experiment`` runs: the paper's comparison, task by task, with every step cached. For each task
and each **teacher seed** (``--teacher-seeds N``: the teacher's sampling seeds ``--seed`` … ``--seed + N - 1``
for drafts and tailoring), :class:`arte.pipeline.Pipeline` drafts, lets the student score the drafts on
the validation split and builds preference pairs; then the conditions (the paper's, :data:`CONDITIONS` of
:mod:`arte_cli.experiment_report`) are

1. **untuned**: the base student (no teacher data; evaluated once);
2. **Original Teacher** (``original``): the *unaligned* teacher's drafts, and of each draft question the
   rationale the student scored best (:func:`arte.pairs.preferred_rationales`): selection, no DPO;
3. **ARTE** (``arte``): DPO on the question and rationale pairs, then the aligned teacher's tailored data;
4. **Question Only** / **Rationale Only** (``question-only`` / ``rationale-only``): DPO on only the
   question pairs / only the rationale pairs (:attr:`arte.pairs.PreferencePair.kind`), then tailoring as
   ARTE does (:meth:`arte.pipeline.Pipeline.branch`: the same drafts and scores, their own pairs, DPO
   and tailoring).

With ``--select-items k`` the pairs and the Original Teacher's selection judge the drafts on the top-k
validation items by IRT discrimination (:class:`arte.pipeline.PipelineConfig.select_items`).

Each fine-tuned condition is LoRA-fine-tuned on its data of each teacher seed with each SFT seed, and
every run is evaluated on the same holdout items (:func:`arte.evaluate.evaluate`) at each shot count, with
the same k-shot demonstrations: k label-balanced holdout items with a templated rationale, taken out of the
evaluated items (:func:`arte.evaluate.split_demos`); no condition trains on them and the teacher never
saw them. Every (fine-tuned condition, teacher seed) trains on the same number of examples: the datasets
are filtered to the examples that fit ``max_length`` and then truncated, in file order, to the smallest
one (or ``--train-size``). **The SFT seed** varies the LoRA initialization and the order of the training
batches (:attr:`arte.sft.SFTConfig.seed`); **the teacher seed** the drafts (so the pairs, the DPO and the
Original Teacher's selection) and the tailored data. Intervals (:mod:`arte.stats` via
:mod:`arte_cli.experiment_report`) resample items, teacher seeds and, within them, SFT seeds.

No signal: a condition that needs pairs of a kind that some teacher seed's drafts do not give (every
rationale ties, or no difference beyond noise) is reported as ``no_signal`` with the reason. When every
requested pair condition has no signal, the task's ``outcome`` is ``no_signal`` (with the pipelines'
``signal``: score spread, the drafts' answers, items); untuned and the Original Teacher (which need no
pair) are still trained and evaluated when requested. A task whose teacher data leave no training example
is ``no_data`` (with the data counts), without runs. The experiment goes on with the other tasks.

Every step is cached under ``--work``, keyed by everything it depends on (a rerun with the same settings
recomputes nothing; a changed setting reruns only the steps that depend on it)::

    <work>/<task>-<sha12 of the task file>/
      teacher<ts>/arte/             arte.pipeline's resumable stages for teacher seed ts (drafts, scores,
                                    pairs, ARTE's DPO and tailoring; the Original Teacher reads its files)
      teacher<ts>/question-only/    a branch of it: the same drafts and scores, question pairs only
      teacher<ts>/rationale-only/   rationale pairs only
      sft/<condition>-t<ts>-seed<k>/   LoRA SFT (adapter/, checkpoints), adapter.gguf, key.json
      eval/<condition>[-t<ts>-seed<k>].json   per-shot outcomes, with their key
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

from arte.backends import open_student, open_teacher
from arte.backends.hf import load_hf
from arte.drafts import read_drafts
from arte.errors import ArteError, ConfigError, ModelError
from arte.evaluate import EvalConfig, split_demos
from arte.export import export_gguf_lora
from arte.finetune_job import FinetuneConfig, evaluate_with
from arte.home import convert_dir, model_dir
from arte.models import resolve_model, sha256_file
from arte.pairs import KINDS, NO_SIGNAL, preferred_rationales
from arte.pipeline import Pipeline
from arte.scoring import MODES
from arte.sft import run_sft
from arte.sft_data import ChatFormat, encode_records
from arte.tasks import label_counts, load_task
from arte_cli.experiment_report import COMPARED, CONDITIONS, FORMAT, NO_DATA, PAIR_CONDITIONS, summarize

__all__ = ["ExperimentSettings", "run_experiment", "equalize", "SEED_VARIES"]

log = logging.getLogger(__name__)

SEED_VARIES = ("seed: the student's LoRA SFT run (adapter initialization, training-batch order); teacher_seed: "
               "the teacher's sampling of drafts and tailored data, hence pairs, DPO and the Original Teacher's "
               "selection")
Bars = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything that shapes the results (stored in the document). ``eval_mode``: one of
    :data:`arte.scoring.MODES`, or ``auto``: ``cot-choice`` (the student reasons, then the likeliest option)
    for multiple-choice tasks, ``generate`` otherwise; ``student_backend`` ``auto``: llama for a GGUF student
    (the adapter exported to GGUF), torch for an HF directory. ``pipeline``'s scoring mode follows
    ``eval_mode`` per task. ``conditions``: the keys of :data:`arte_cli.experiment_report.CONDITIONS` to
    run (at least one fine-tuned); ``teacher_seeds``: how many teacher sampling seeds."""

    pipeline: Any                       # arte.pipeline.PipelineConfig
    sft: Any                            # arte.sft.SFTConfig (its seed is replaced by each run's)
    teacher: str = "default"
    student: str = "default"
    teacher_backend: str = "llama"
    student_backend: str = "auto"
    seeds: int = 2
    teacher_seeds: int = 2
    conditions: tuple[str, ...] = ("untuned", "original", "arte", "question-only", "rationale-only")
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
        if self.teacher_seeds < 1:
            raise ConfigError("teacher_seeds", f"must be >= 1, got {self.teacher_seeds}")

        if isinstance(self.conditions, list):
            object.__setattr__(self, "conditions", tuple(self.conditions))
        if (isinstance(self.conditions, str) or not self.conditions or len(set(self.conditions)) != len(self.conditions)
                or any(c not in CONDITIONS for c in self.conditions) or set(self.conditions) == {"untuned"}):
            raise ConfigError("conditions", f"must be distinct names of {', '.join(CONDITIONS)}, at least one "
                                            f"fine-tuned, got {self.conditions!r}")
        # in the paper's order, whatever order they were given in
        object.__setattr__(self, "conditions", tuple(c for c in CONDITIONS if c in self.conditions))

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
    open_teacher: Callable[[Path | None], Any]          # drafts (bare) and tailoring (with a DPO adapter)
    open_student: Callable[[], Any]
    identity: dict[str, str] = field(default_factory=dict)


def _key(backend: str, ref: Any) -> str:
    """A model's identity in cache keys: runtime, name and sha256 (or path)."""
    return f"{backend}:{ref.name}:{ref.sha256 or ref.path}"


def _models(s: ExperimentSettings) -> _Models:
    teacher = resolve_model(s.teacher, model_dir())
    student = resolve_model(s.student, model_dir())
    backend = s.student_backend
    if backend == "auto":
        backend = "llama" if student.kind == "gguf" else "torch"
    if backend == "llama" and student.kind != "gguf":
        raise ModelError(f"--student-backend llama needs a GGUF student; {student.path} is an HF directory "
                         f"(use torch)")
    # Drafts on the chosen runtime; tailoring with the DPO adapter (a PEFT directory) on torch ("auto").
    teacher_backend = "torch" if s.teacher_backend == "torch" else "auto"

    def open_t(adapter: Path | None) -> Any:
        return open_teacher(teacher, teacher_backend, adapter=adapter, n_threads=s.threads, convert_dir=_convert_dir())

    def open_s() -> Any:
        return open_student(student, backend, n_threads=s.threads, convert_dir=_convert_dir())

    # The pipeline tailors with the torch teacher plus the DPO adapter: its identity keys the tailor stage.
    return _Models(teacher, student, backend, open_t, open_s,
                   {"teacher": _key(s.teacher_backend, teacher), "student": _key(backend, student),
                    "tailor_teacher": _key("torch", teacher)})


def _timed(seconds: dict[str, float], name: str, t0: float) -> None:
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 2)


class _TaskRun:
    """One task's part of the experiment (see the module docstring)."""

    def __init__(self, task_path: Path, s: ExperimentSettings, m: _Models, work_root: Path, bars: Bars) -> None:
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

    def config(self, index: int, kinds: tuple[str, ...]) -> Any:
        """The pipeline config of teacher seed number ``index``: drafts and tailoring sampled with the
        settings' seeds + ``index``, scoring in the task's mode, pairs of ``kinds``."""
        p = self.s.pipeline
        return dataclasses.replace(p, scoring=dataclasses.replace(p.scoring, mode=self.mode),
                                   elicit=dataclasses.replace(p.elicit, seed=p.elicit.seed + index),
                                   tailor=dataclasses.replace(p.tailor, seed=p.tailor.seed + index),
                                   pairs=dataclasses.replace(p.pairs, kinds=kinds))

    def pipeline(self, index: int) -> Any:
        """The full pipeline (both pair kinds: ARTE) of teacher seed number ``index``."""

        ts = self.s.pipeline.elicit.seed + index
        return Pipeline(self.work / f"teacher{ts}" / "arte", self.task, self.config(index, KINDS),
                        teacher_model=self.m.teacher, open_teacher=self.m.open_teacher,
                        open_student=self.m.open_student, identity=self.m.identity, convert_dir=_convert_dir(),
                        progress=lambda st, d, t: self.bars(f"t{ts} {st}", d, t))

    def teacher_data(self, index: int) -> dict[str, Any]:
        """Teacher seed number ``index``: every requested condition's training records (or why it has none)
        and the stages that made them. ``{"teacher_seed", "records": {condition: [...]}, "outcomes":
        {condition: {"outcome", "reason"?, ...numbers}}, "pipelines": {name: stages}, "signal"?}``."""

        main = self.pipeline(index)
        ts = self.s.pipeline.elicit.seed + index
        wanted = [c for c in self.s.conditions if c != "untuned"]
        stages = ["draft", "score", "pairs"] + (["align", "tailor"] if "arte" in wanted else [])
        t0 = time.perf_counter()
        summaries = {"arte": main.run(stages)}
        out: dict[str, Any] = {"teacher_seed": ts, "records": {}, "outcomes": {}}
        if "original" in wanted:
            records, info = preferred_rationales(read_drafts(main.paths["drafts"]), main.pair_scores(),
                                                 main.config.pairs)
            out["records"]["original"] = records
            out["outcomes"]["original"] = {"outcome": COMPARED, "selection": info}
        for c in wanted:
            if c not in PAIR_CONDITIONS:
                continue
            if c == "arte" or summaries["arte"]["outcome"] == NO_SIGNAL:   # no pair at all: no ablation either
                run = summaries["arte"]
            else:
                branch = main.branch(self.work / f"teacher{ts}" / c, self.config(index, PAIR_CONDITIONS[c]))
                run = summaries[c] = branch.run(("pairs", "align", "tailor"))   # drafts and scores: main's
            if run["outcome"] == NO_SIGNAL:
                out["outcomes"][c] = {"outcome": NO_SIGNAL, "reason": f"teacher seed {ts}: {run['reason']}"}
                out.setdefault("signal", run["signal"])
                continue
            st = run["stages"]
            pairs, align = st["pairs"]["summary"], st["align"]["summary"]
            out["outcomes"][c] = {"outcome": COMPARED, "pairs": pairs["counts"], "trained_on": align["pairs"],
                                  "reward": align["reward"], "reward_margin": align["reward_margin"]}
            out["records"][c] = (read_drafts(run["files"]["dataset"])
                                 if Path(run["files"]["dataset"]).stat().st_size else [])
        _timed(self.seconds, "pipeline", t0)
        out["pipelines"] = {name: {k: {"skipped": v["skipped"], "seconds": v["seconds"], "summary": v["summary"],
                                       **({"stopped": v["stopped"]} if "stopped" in v else {})}
                                   for k, v in run["stages"].items()} for name, run in summaries.items()}
        for name, run in summaries.items():
            self.cached += [f"teacher{ts}/{name}/{k}" for k, v in run["stages"].items()
                            if v["skipped"] and "stopped" not in v]
        out["split"] = main.split
        return out

    # ---- student ------------------------------------------------------------------------------------

    def train(self, condition: str, teacher_seed: int, seed: int, records: Sequence[Any]
              ) -> tuple[Path, Path | None, dict[str, Any]]:
        """LoRA SFT of the student on ``records`` (``condition``'s data of ``teacher_seed``) with ``seed``:
        (PEFT adapter dir, GGUF adapter or None, the SFT summary)."""

        sft = dataclasses.replace(self.s.sft, seed=seed)
        out = self.work / "sft" / f"{condition}-t{teacher_seed}-seed{seed}"
        gguf = out / "adapter.gguf" if self.m.eval_backend == "llama" else None
        cache = _Cache(out / "key.json", _sha({"student": self.m.identity["student"], "sft": sft.fingerprint(),
                                               "records": [r.to_dict() for r in records]}))
        adapter = out / "sft" / "adapter"
        done = cache.load()
        if done is not None and (adapter / "adapter_model.safetensors").is_file() and (gguf is None or gguf.is_file()):
            self.cached.append(f"sft/{condition}-t{teacher_seed}-seed{seed}")
            return adapter, gguf, done["sft"]
        shutil.rmtree(out, ignore_errors=True)   # checkpoints of other settings would be refused
        name = f"{condition} t{teacher_seed} s{seed} train"
        peft_model, _tok, res = run_sft(self.m.student, records, self.task.instruction, sft, out / "sft",
                                        convert_dir=_convert_dir(),
                                        progress=lambda step, total, _loss: self.bars(name, step, total))
        if res.status != "done":
            raise ConfigError("sft", f"training of {condition} (teacher seed {teacher_seed}) seed {seed} stopped "
                                     f"early ({res.status})")
        model_config = peft_model.get_base_model().config.to_dict()
        del peft_model
        gc.collect()
        if gguf is not None:

            export_gguf_lora(adapter, gguf, model_config)
        summary = {k: v for k, v in res.to_dict().items() if k in ("steps", "tokens", "seconds")}
        summary["loss_first_last"] = [round(res.losses[0], 4), round(res.losses[-1], 4)] if res.losses else []
        cache.save({"sft": summary})
        return adapter, gguf, summary

    def evaluate(self, name: str, fmt: Any, items: Sequence[Any], demos: Sequence[Any],
                 adapter: Path | None, gguf: Path | None) -> dict[int, dict[str, Any]]:
        """Per shot count ``{"outcomes", "answers", "seconds"}`` of the student with the adapter (None: the
        bare student)."""

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

    def training_data(self, fmt: Any, datasets: dict[tuple[str, int], list[Any]]
                      ) -> tuple[dict[tuple[str, int], list[Any]], dict[str, Any]]:
        """Each (condition, teacher seed)'s training records, equal in number (see the module docstring),
        and the counts; with none to train on, the counts carry the ``problem``."""

        max_length = self.s.sft.max_length
        fit = {}
        for key, recs in datasets.items():
            too_long = set(encode_records(fmt, recs, max_length)[1])
            fit[key] = [r for r in recs if r.id not in too_long]
        data, n = equalize(fit, self.s.train_size) if fit else ({}, 0)
        info: dict[str, Any] = {}
        name = {key: f"{key[0]}@t{key[1]}" for key in datasets}
        if n == 0:
            empty = [name[k] for k, v in fit.items() if not v]
            info["problem"] = (f"{self.task.name}: no usable training examples from the "
                               f"{', '.join(empty) or 'capped'} teacher data; raise --tailor-questions, "
                               f"--n-questions or --sft-max-length, or lower --check-samples")
        info |= {"kept": {name[k]: len(v) for k, v in datasets.items()},
                 "fit": {name[k]: len(v) for k, v in fit.items()}, "used": n,
                 "dropped_too_long": {name[k]: len(v) - len(fit[k]) for k, v in datasets.items()},
                 "truncated": {name[k]: len(v) - n for k, v in fit.items()},
                 "note": f"every fine-tuned condition trains on {n} examples per teacher seed: each dataset "
                         f"filtered to the examples that fit {max_length} tokens, then cut to the smallest size "
                         f"in file order"}
        return data, info

    # ---- the whole task ------------------------------------------------------------------------------

    def _not_compared(self, outcome: str, reason: str, split: Any, record: dict[str, Any],
                      **numbers: Any) -> dict[str, Any]:
        """The record of a task that cannot be compared (``no_signal``, ``no_data``): why, with the numbers."""
        log.warning("task %s: %s: %s", self.task.name, outcome, reason)
        _timed(self.seconds, "total", self._t_task)
        return {"task": self.task.name, "source": str(self.task.source), "sha256": self.task_sha,
                "kind": self.task.kind, "eval_mode": self.mode, "outcome": outcome, "reason": reason, **numbers,
                "split": {"seeds": len(split.seeds), "validation": len(split.validation),
                          "holdout_available": len(split.holdout)},
                **record, "runs": [], "seconds": self.seconds, "cached": self.cached, "work_dir": str(self.work)}

    def run(self) -> dict[str, Any]:
        self._t_task = time.perf_counter()
        per_seed = [self.teacher_data(i) for i in range(self.s.teacher_seeds)]
        split = per_seed[0]["split"]
        tseeds = [d["teacher_seed"] for d in per_seed]
        fine = [c for c in self.s.conditions if c != "untuned"]
        conditions: dict[str, Any] = {}
        for c in fine:
            outs = {str(d["teacher_seed"]): d["outcomes"][c] for d in per_seed}
            missing = [o for o in outs.values() if o["outcome"] != COMPARED]
            conditions[c] = ({"outcome": NO_SIGNAL, "reason": "; ".join(o["reason"] for o in missing)} if missing
                             else {"outcome": COMPARED})
            conditions[c]["teacher_seeds"] = outs
        if "untuned" in self.s.conditions:
            conditions["untuned"] = {"outcome": COMPARED}
        record = {"teacher_seeds": tseeds, "conditions": conditions,
                  "pipelines": {str(d["teacher_seed"]): d["pipelines"] for d in per_seed}}
        signal = {str(d["teacher_seed"]): d["signal"] for d in per_seed if "signal" in d}
        pair_cs = [c for c in fine if c in PAIR_CONDITIONS]
        no_signal = bool(pair_cs) and all(conditions[c]["outcome"] == NO_SIGNAL for c in pair_cs)
        why: dict[str, list[str]] = {}   # conditions without signal for the same reason are named together
        for c in pair_cs:
            if conditions[c]["outcome"] == NO_SIGNAL:
                why.setdefault(conditions[c]["reason"], []).append(c)
        reason = "; ".join(f"{', '.join(cs)}: {r}" for r, cs in why.items())
        train = [c for c in fine if conditions[c]["outcome"] == COMPARED]
        if not train:   # nothing to fine-tune: the task is reported with why
            return self._not_compared(NO_SIGNAL, reason, split, record, signal=signal)
        if not split.holdout:
            raise ConfigError("holdout", f"task {self.task.name} has no items left for the holdout after "
                                         f"{len(split.seeds)} seeds and {len(split.validation)} validation items")
        demos, rest = split_demos(self.task, split.holdout, max(self.s.shots), seed=self.s.pipeline.split_seed)
        items = rest[:self.s.holdout]

        model, tok = load_hf(self.m.student, convert_dir=_convert_dir())
        del model
        fmt = ChatFormat(tok, self.task.instruction)
        data, data_info = self.training_data(fmt, {(c, d["teacher_seed"]): d["records"][c]
                                                   for d in per_seed for c in train})
        if data_info["used"] == 0:
            return self._not_compared(NO_DATA, data_info["problem"], split, record, data=data_info,
                                      **({"signal": signal} if signal else {}))

        runs: list[dict[str, Any]] = []
        if "untuned" in self.s.conditions:
            t0 = time.perf_counter()
            base = self.evaluate("untuned", fmt, items, demos, None, None)
            _timed(self.seconds, "eval", t0)
            runs += [{"condition": "untuned", "teacher_seed": None, "seed": None, "shots": k, **v}
                     for k, v in base.items()]
        training: dict[str, Any] = {}
        for ts in tseeds:
            for seed in range(self.s.seeds):
                for c in train:
                    name = f"{c}-t{ts}-seed{seed}"
                    t0 = time.perf_counter()
                    adapter, gguf, sft = self.train(c, ts, seed, data[c, ts])
                    _timed(self.seconds, "sft", t0)
                    training[name] = sft
                    t0 = time.perf_counter()
                    res = self.evaluate(name, fmt, items, demos, adapter, gguf)
                    _timed(self.seconds, "eval", t0)
                    runs += [{"condition": c, "teacher_seed": ts, "seed": seed, "shots": k, **v}
                             for k, v in res.items()]
        _timed(self.seconds, "total", self._t_task)
        # what the steps took when they ran (cached ones included; model loading excluded)
        compute = {"pipeline": sum(st["seconds"] for d in per_seed for p in d["pipelines"].values()
                                   for st in p.values()),
                   "sft": sum(v["seconds"] for v in training.values()),
                   "eval": sum(r["seconds"] for r in runs)}
        chance = (sum(1 / len(e.choices) for e in items) / len(items)) if self.task.kind == "multiple_choice" else 0.0
        labels = {"seeds": label_counts(split.seeds), "validation": label_counts(split.validation),
                  "demos": label_counts(demos), "holdout": label_counts(items)}
        labels |= {f"{c}@t{ts}": label_counts(recs) for (c, ts), recs in data.items()}
        out = {"task": self.task.name, "source": str(self.task.source), "sha256": self.task_sha,
               "kind": self.task.kind, "eval_mode": self.mode, "outcome": NO_SIGNAL if no_signal else COMPARED,
               **({"reason": reason, "signal": signal} if no_signal else {}),
               "chance": round(chance, 4), "holdout_ids": [e.id for e in items], "demo_ids": [d.id for d in demos],
               "split": {"seeds": len(split.seeds), "validation": len(split.validation),
                         "holdout_available": len(split.holdout)},
               "labels": labels, "data": data_info, **record, "training": training, "runs": runs,
               "seconds": self.seconds, "compute_seconds": {k: round(v, 1) for k, v in compute.items()},
               "cached": self.cached, "work_dir": str(self.work)}
        return out


def _convert_dir() -> Path:
    return convert_dir()


def run_experiment(task_paths: Sequence[Path], s: ExperimentSettings, work: Path, bars: Bars) -> dict[str, Any]:
    """Run every task (see the module docstring) and return the result document
    (:mod:`arte_cli.experiment_report`)."""

    t0 = time.perf_counter()
    m = _models(s)
    tasks = []
    for path in task_paths:
        try:
            t = _TaskRun(path, s, m, work, bars).run()
        except ArteError:
            log.error("task %s failed; the steps it finished stay cached under %s for a rerun", path, work)
            raise
        if t["runs"]:
            t.update(summarize(t["runs"], s.shots, n_boot=s.n_boot, level=s.level, seed=0))
        tasks.append(t)
    return {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": {**s.to_dict(), "tasks": [str(p) for p in task_paths]},
            "models": {"teacher": m.identity["teacher"], "tailor_teacher": m.identity["tailor_teacher"],
                       "student": m.identity["student"], "eval_backend": m.eval_backend},
            "seed_varies": SEED_VARIES,
            "bootstrap": {"n_boot": s.n_boot, "level": s.level, "seed": 0,
                          "method": "percentile bootstrap, items resampled jointly for paired conditions, "
                                    "teacher seeds resampled (jointly for conditions made from the same "
                                    "teacher seeds) and SFT seed runs within them per condition (arte.stats)"},
            "tasks": tasks, "seconds": round(time.perf_counter() - t0, 1)}

