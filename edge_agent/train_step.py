"""The device's one fine-tune step: from a verified dataset to an evaluated, kept-or-dropped adapter.

Two callers, one path (:func:`_run`): the run loop's train step (:func:`train_step`, bounded by the device
profile) and ``edge-agent train`` (:func:`run_train`, bounded by the command's options). Both build an
:class:`arte.sft.SFTConfig` and an :class:`arte.evaluate.EvalConfig` and call
:func:`arte.finetune_job.finetune` (LoRA SFT, GGUF export, before/after evaluation, keep rule).

The loop's contract: a train step takes a :class:`TrainRequest` (the verified tailored dataset, the private
task and its split, the device profile with its LoRA/batch/sequence limits and budgets, where to write,
the student model) and returns a :class:`TrainResult` (the exported adapter, its format, accuracy
before/after on the private holdout, and the keep decision). The loop records the result and activates
the adapter only when it is kept, so a step never changes what the agent serves. Within the profile:

* ``training.lora_rank/lora_alpha/batch_size/max_seq_len`` set the adapter and the batches,
  ``training.max_examples`` caps the records used, ``runtime.threads`` the CPU threads;
  ``runtime.device``/``gpu_layers`` the llama.cpp layers evaluation offloads (as in :mod:`edge_agent.student`);
  ``runtime.device``/``quantization`` the trainer's device and precision (``edge_agent.student.train_options``);
* ``budget.memory_mib`` bounds the trainer's memory (micro-batches and checkpointing are chosen to fit) and
  ``budget.train_seconds`` its wall time: a run that reaches it checkpoints and raises
  :class:`TrainingIncomplete`; the next call with the same request resumes from the checkpoint;
* evaluation runs on the runtime the device serves with (llama.cpp + the GGUF adapter for ``llama``
  profiles), 0- and 3-shot, in the profile's ``scoring.mode`` (default ``cot-choice``: the student reasons;
  ``loglik`` on exact-match items falls back to ``generate``);
* the keep rule is the one rule of the project, :func:`arte.evaluate.keep_if_better` (one-sided exact
  McNemar test on the 0-shot holdout outcomes), compared with the adapter active before.

Failures raise :class:`TrainingError` (or an :class:`arte.errors.ArteError`); the loop retries a few times,
then gives the dataset up.

``edge-agent train`` keys its work directory by the data, the task and the training settings, so rerunning
an interrupted command resumes its training; it is removed once the job has stored its adapter.

Before torch is loaded, OpenMP is made to wait passively (:func:`arte.procs.passive_openmp`): the agent
shares its device.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from arte.adapters import AdapterStore
from arte.drafts import Draft, read_drafts
from arte.evaluate import EvalConfig
from arte.finetune_job import FinetuneConfig, FinetuneResult, finetune
from arte.home import arte_home, convert_dir, model_dir
from arte.models import ModelRef, resolve_model, sha256_file
from arte.procs import passive_openmp
from arte.scoring import DEFAULT_MODE
from arte.sft import SFTConfig
from arte.tasks import Example, Task, load_task
from arte.wire import Accuracy
from edge_agent.errors import TrainingError
from edge_agent.student import train_options
from firmware_profiles import Profile

__all__ = ["TrainOptions", "TrainRequest", "TrainResult", "TrainingIncomplete", "run_train", "train_step"]

_RUNTIME = ("torch", "peft")   # what LoRA SFT needs beyond the agent's own install


class TrainingIncomplete(TrainingError):
    """Training stopped on the profile's time budget; the same request resumes it (not a failure)."""


@dataclass(frozen=True)
class TrainRequest:
    dataset_path: Path            # verified JSONL (sha256 and signature checked just before the call)
    task: Task                    # the private task (never sent anywhere)
    holdout: tuple[Example, ...]  # private holdout items for before/after evaluation
    profile: Profile              # runtime, budget.train_seconds, training.* limits
    out_dir: Path                 # where this step may write (its work dir and the adapter store)
    model: str = "default"        # 'default', a GGUF file or an HF directory
    split_seed: int = 0           # the split that produced ``holdout`` (arte.tasks.split_task, n_seeds=0)
    validation: float = 0.5
    store_dir: Path | None = None  # the device's adapter store (default: out_dir / "store")
    work_dir: Path | None = None   # resumable training state (default: out_dir / "work")


@dataclass(frozen=True)
class TrainResult:
    adapter_path: Path
    adapter_format: str           # "gguf-lora" (llama.cpp) or "onnx" or "peft"
    before: Accuracy
    after: Accuracy
    keep: bool                    # the keep rule's decision (arte.evaluate.keep_if_better)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainOptions:
    """``edge-agent train``'s options, as given."""

    data: Path
    task: Path
    model: str = "default"
    adapters_dir: Path | None = None
    work_dir: Path | None = None
    backend: str = "llama"
    steps: int | None = None
    epochs: int = 1
    lr: float = 2e-4
    rank: int = 8
    lora_alpha: float = 16.0
    batch_size: int = 4
    max_length: int = 256
    threads: int | None = None
    time_budget: float | None = None
    memory_budget: int | None = None
    precision: str = "auto"
    holdout: int | None = None
    split_seed: int = 0
    validation: float = 0.5
    eval_mode: str = DEFAULT_MODE
    shots: tuple[int, ...] = (0, 3)
    max_new_tokens: int = 128
    significance: float = 0.05
    min_gain: float = 0.0


def _run(ref: ModelRef, task: Task, records: list[Draft], store: AdapterStore, work: Path, config: FinetuneConfig,
         progress: Callable[[str, int, int], None] | None = None) -> FinetuneResult:
    """The one path both callers take: check the runtime, keep OpenMP passive, fine-tune-export-evaluate."""
    missing = [m for m in _RUNTIME if importlib.util.find_spec(m) is None]
    if missing:
        raise TrainingError(f"the fine-tuning runtime is not installed ({', '.join(missing)}): "
                            "pip install 'arte-edge[training]'")
    passive_openmp()   # before torch loads OpenMP
    return finetune(ref, task, records, store, work, config, convert_dir=convert_dir(), progress=progress)


def _accuracy(by_shots: dict[Any, dict[str, Any]], n_items: int) -> Accuracy:
    acc = {int(k): float(v["accuracy"]) for k, v in by_shots.items()}
    return Accuracy(zero_shot=acc.get(0, 0.0), three_shot=acc.get(3, acc.get(0, 0.0)), n_items=n_items)


def train_step(req: TrainRequest) -> TrainResult:
    """The run loop's step: fine-tune, export and evaluate within the request's profile."""
    p = req.profile
    records = read_drafts(req.dataset_path)[:p.training.max_examples]
    multiple_choice = all(x.choices for x in req.holdout) if req.holdout else False
    sft = SFTConfig(rank=p.training.lora_rank, alpha=float(p.training.lora_alpha), batch_size=p.training.batch_size,
                    max_length=p.training.max_seq_len, threads=p.runtime.threads,
                    memory_budget_mb=p.budget.memory_mib, time_budget_s=p.budget.train_seconds,
                    **train_options(p.runtime))   # runtime.device / quantization reach the trainer
    # The profile's scoring mode (default cot-choice: the student reasons); answer-first loglik cannot
    # evaluate exact-match items, which are then generated and matched.
    mode = "generate" if p.scoring.mode == "loglik" and not multiple_choice else p.scoring.mode
    ev = EvalConfig(mode=mode, shots=(0, 3), decide_on=0, max_new_tokens=p.scoring.max_new_tokens)
    ref = resolve_model(req.model, model_dir())
    backend = "llama" if p.runtime.backend == "llama" and ref.kind == "gguf" else "torch"
    config = FinetuneConfig(sft=sft, eval=ev, backend=backend, split_seed=req.split_seed,
                            validation=req.validation, n_threads=p.runtime.threads,
                            n_gpu_layers=p.runtime.n_gpu_layers if backend == "llama" else 0)
    store = AdapterStore(req.store_dir or req.out_dir / "store")
    # keyed by the training settings: a run resumes only its own trajectory (an upgrade starts afresh)
    work = (req.work_dir or req.out_dir / "work") / sft.fingerprint()
    result = _run(ref, req.task, records, store, work, config)
    if result.status == "incomplete":
        raise TrainingIncomplete(f"training reached the profile's time budget ({p.budget.train_seconds:g} s) "
                                 f"after {result.sft.get('steps')}/{result.sft.get('total_steps')} steps; "
                                 "it resumes from its checkpoint on the next iteration")
    if result.version is None:
        raise TrainingError(f"fine-tuning ended '{result.status}' without storing an adapter")
    version = store.get(result.version)
    fmt, path = ("gguf-lora", version.file("adapter.gguf")) if backend == "llama" else ("peft", version.path)
    return TrainResult(adapter_path=path, adapter_format=fmt, before=_accuracy(result.before, result.n_holdout),
                       after=_accuracy(result.after, result.n_holdout), keep=result.status == "kept",
                       details={"version": result.version, "decision": result.decision, "sft": result.sft,
                                "seconds": result.seconds, "n_records": result.n_records, "labels": result.labels})


# -- edge-agent train ------------------------------------------------------------------------------------------


def _work_key(data: Path, task: Path, ref_sha: str | None, fingerprint: str) -> str:
    h = hashlib.sha256()
    for part in (sha256_file(data), sha256_file(task), ref_sha or "", fingerprint):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _human(r: dict[str, Any]) -> str:
    lines = [f"status: {r['status']}" + (f" (version {r['version']})" if r["version"] else ""),
             f"active adapter: {r['active'] or 'none (base model)'} (before: {r['previous'] or 'none'})",
             f"training: {r['sft']['steps']}/{r['sft']['total_steps']} steps, {r['sft']['tokens_per_s']} tok/s, "
             f"peak RSS {r['sft']['peak_rss_mb']:.0f} MiB, {r['sft']['precision']}"]
    if r["before"]:
        lines.append(f"{'shots':>5} {'before':>8} {'after':>8}   ({r['n_holdout']} holdout items)")
        for k in r["before"]:
            lines.append(f"{k:>5} {r['before'][k]['accuracy']:8.3f} {r['after'][k]['accuracy']:8.3f}")
        lines.append(f"decision: {r['decision']['reason']}")
    else:
        lines.append("training stopped before the end (time budget); rerun the same command to resume")
    return "\n".join(lines)


def run_train(o: TrainOptions) -> tuple[dict[str, Any], str]:
    """``edge-agent train``: fine-tune with the command's options; returns (JSON document, human summary)."""
    sft = SFTConfig(rank=o.rank, alpha=o.lora_alpha, lr=o.lr, epochs=o.epochs, max_steps=o.steps,
                    batch_size=o.batch_size, max_length=o.max_length, threads=o.threads,
                    memory_budget_mb=o.memory_budget, time_budget_s=o.time_budget, precision=o.precision)
    ev = EvalConfig(mode=o.eval_mode, shots=o.shots, decide_on=0 if 0 in o.shots else o.shots[0],
                    max_new_tokens=o.max_new_tokens, alpha=o.significance, min_gain=o.min_gain)
    config = FinetuneConfig(sft=sft, eval=ev, backend=o.backend, split_seed=o.split_seed, validation=o.validation,
                            holdout_items=o.holdout, n_threads=o.threads)
    task = load_task(o.task)
    records = read_drafts(o.data)
    ref = resolve_model(o.model, model_dir())
    store = AdapterStore(o.adapters_dir or arte_home() / "adapters")
    work = o.work_dir or arte_home() / "sft-work" / _work_key(o.data, o.task, ref.sha256, sft.fingerprint())

    bars: dict[str, Any] = {}

    def progress(phase: str, n: int, total: int) -> None:
        if phase not in bars:
            for b in bars.values():
                b.close()
            bars[phase] = tqdm(total=total, desc=phase, unit="step" if phase == "train" else "item",
                               file=sys.stderr, disable=None)
        bars[phase].update(n)

    try:
        result = _run(ref, task, records, store, work, config, progress=progress)
    finally:
        for b in bars.values():
            b.close()
    if result.status != "incomplete" and o.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    data = {"task": task.name, "data": str(o.data), "model": ref.name, "backend": o.backend,
            "adapters": str(store.root), **result.to_dict(), "options": {k: str(v) if isinstance(v, Path) else v
                                                                         for k, v in asdict(o).items()}}
    return data, _human(data)
