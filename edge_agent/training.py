"""The run loop's train step: one call from a verified dataset to an evaluated adapter.

Contract: a train step takes a :class:`TrainRequest` (the verified tailored dataset, the private task and
its split, the device profile with its LoRA/batch/sequence limits and budgets, where to write, the student
model) and returns a :class:`TrainResult` (the exported adapter, its format, accuracy before/after on the
private holdout and, when the step decided it, whether to keep the adapter). The loop records the result
and activates the adapter only when it is kept, so a step never changes what the agent serves.

:func:`train_step` is the default: LoRA SFT, GGUF export and before/after evaluation by
:func:`arte.finetune.finetune`, bounded by the profile:

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
* the keep rule is :func:`arte.evaluate.keep_if_better` (one-sided exact McNemar test on the 0-shot
  holdout outcomes, the same rule as ``edge-agent train``), compared with the adapter active before.

Failures raise :class:`TrainingError` (or an :class:`arte.errors.ArteError`); the loop retries a few times,
then gives the dataset up.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arte.tasks import Example, Task
from arte.wire import Accuracy
from edge_agent.errors import TrainingError
from edge_agent.student import train_options
from firmware_profiles import Profile

__all__ = ["TrainRequest", "TrainResult", "TrainingIncomplete", "train_step"]


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
    base_adapter: Path | None = None
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
    keep: bool | None = None      # the step's keep decision; None lets the loop decide
    details: dict[str, Any] = field(default_factory=dict)


def _accuracy(by_shots: dict[Any, dict[str, Any]], n_items: int) -> Accuracy:
    acc = {int(k): float(v["accuracy"]) for k, v in by_shots.items()}
    return Accuracy(zero_shot=acc.get(0, 0.0), three_shot=acc.get(3, acc.get(0, 0.0)), n_items=n_items)


def train_step(req: TrainRequest) -> TrainResult:
    """Fine-tune, export and evaluate with :func:`arte.finetune.finetune` within the request's profile."""
    try:
        importlib.import_module("arte.finetune")
    except ModuleNotFoundError as e:
        raise TrainingError(f"the fine-tuning runtime is not installed ({e.name}): "
                            "pip install 'arte-edge[training]'") from None
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see edge_agent.train: the device is shared
    from arte.adapters import AdapterStore
    from arte.drafts import read_drafts
    from arte.evaluate import EvalConfig
    from arte.finetune import FinetuneConfig, finetune
    from arte.models import resolve_model
    from arte.sft import SFTConfig
    from arte.home import convert_dir, model_dir

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
    result = finetune(ref, req.task, records, store, work, config, convert_dir=convert_dir())
    if result.status == "incomplete":
        raise TrainingIncomplete(f"training reached the profile's time budget ({p.budget.train_seconds:g} s) "
                                 f"after {result.sft.get('steps')}/{result.sft.get('total_steps')} steps; "
                                 "it resumes from its checkpoint on the next iteration")
    assert result.version is not None
    version = store.get(result.version)
    fmt, path = ("gguf-lora", version.file("adapter.gguf")) if backend == "llama" else ("peft", version.path)
    return TrainResult(adapter_path=path, adapter_format=fmt, before=_accuracy(result.before, result.n_holdout),
                       after=_accuracy(result.after, result.n_holdout), keep=result.status == "kept",
                       details={"version": result.version, "decision": result.decision, "sft": result.sft,
                                "seconds": result.seconds, "n_records": result.n_records, "labels": result.labels})
