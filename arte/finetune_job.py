"""The device's fine-tuning job: LoRA SFT → GGUF export → before/after evaluation → keep or reject.

Contract: ``finetune(ref, task, records, store, work_dir, config)`` trains a LoRA adapter for the student
``ref`` on tailored ``records`` (:mod:`arte.sft`), exports it for llama.cpp (:mod:`arte.export`),
evaluates the currently active adapter (or the bare base) and the new one on the device's holdout split
of ``task`` with the same backend and items (:mod:`arte.evaluate`), stores the new adapter as a version
with its metrics and verdict (:mod:`arte.adapters`) and activates it only if the keep rule says it beats
the current one. Files are written only under ``work_dir`` and the store's directory.

The holdout is the part of ``task`` that :func:`arte.tasks.split_task` (``n_seeds=0``) leaves after the
``validation`` share used to score drafts, the same convention as ``edge-agent score``. k-shot
demonstrations are k label-balanced holdout items, taken out of the evaluated items
(:func:`arte.evaluate.split_demos`): never the training records, which the new adapter was trained on.

Training is resumable: ``work_dir`` holds its checkpoints, and a run that stops on its time budget (or
``should_stop``) returns ``status="incomplete"`` without evaluating; calling again with the same
``work_dir`` resumes. Otherwise ``status`` is ``"kept"`` or ``"rejected"``; a rejected adapter is stored
(for the record) but the previously active version stays active.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from arte.adapters import AdapterStore
from arte.backends import LOCAL_BACKENDS, open_student
from arte.backends.hf import TorchStudent, load_hf
from arte.drafts import Draft
from arte.errors import ConfigError, ModelError
from arte.evaluate import EvalConfig, EvalResult, evaluate, keep_if_better, split_demos
from arte.export import export_gguf_lora
from arte.models import ModelRef, adapter_base
from arte.sft import SFTConfig, run_sft
from arte.sft_data import ChatFormat
from arte.tasks import Task, label_counts, split_task

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "holdout_items", "eval_split", "evaluate_with",
           "EVAL_BACKENDS"]

log = logging.getLogger(__name__)

EVAL_BACKENDS = LOCAL_BACKENDS
Progress = Callable[[str, int, int], None]   # (phase, units done now, phase total)


@dataclass(frozen=True)
class FinetuneConfig:
    """The job's settings: training, evaluation, and where the holdout comes from.

    Args:
        backend: runtime of the before/after evaluation: ``llama`` (the GGUF base + the GGUF adapter, what
            the device runs) or ``torch`` (the dequantized base + the PEFT adapter).
        split_seed, validation: the task split (``validation`` share for scoring, the rest is holdout).
        holdout_items: evaluate on at most this many holdout items (None: all).
        gguf_dtype: ``f32`` (exact) or ``f16`` tensors in the exported adapter.
        n_threads: CPU threads for evaluation (training uses ``sft.threads``).
        n_gpu_layers: layers llama.cpp offloads to the GPU for evaluation (-1: all; needs a GPU build).
    """

    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    backend: str = "llama"
    split_seed: int = 0
    validation: float = 0.5
    holdout_items: int | None = None
    gguf_dtype: str = "f32"
    n_threads: int | None = None
    n_gpu_layers: int = 0

    def __post_init__(self) -> None:
        if self.backend not in EVAL_BACKENDS:
            raise ConfigError("backend", f"must be one of {', '.join(EVAL_BACKENDS)}, got {self.backend!r}")
        if not 0.0 <= self.validation < 1.0:
            raise ConfigError("validation", f"must be in [0, 1), got {self.validation}")
        if self.holdout_items is not None and self.holdout_items < 1:
            raise ConfigError("holdout_items", f"must be >= 1, got {self.holdout_items}")
        if self.n_gpu_layers < -1:
            raise ConfigError("n_gpu_layers", f"must be >= -1 (-1: all layers), got {self.n_gpu_layers}")
        if self.gguf_dtype not in ("f32", "f16"):
            raise ConfigError("gguf_dtype", f"must be f32 or f16, got {self.gguf_dtype!r}")


@dataclass
class FinetuneResult:
    """What the job did. ``before``/``after`` map shot counts to accuracy summaries."""

    status: str                      # kept | rejected | incomplete
    version: str | None              # the stored version (None when incomplete)
    active: str | None               # the active version after the job (None: the base)
    previous: str | None             # the version active before the job
    n_records: int
    n_holdout: int
    sft: dict[str, Any]
    before: dict[int, dict[str, Any]] = field(default_factory=dict)
    after: dict[int, dict[str, Any]] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)   # label distribution per dataset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_split(task: Task, config: FinetuneConfig) -> tuple[list[Draft], list[Any]]:
    """The k-shot demonstrations (``max(config.eval.shots)`` label-balanced holdout items with a templated
    rationale) and the holdout items evaluated (the rest, at most ``holdout_items``)."""
    split = split_task(task, seed=config.split_seed, n_seeds=0, validation=config.validation)
    if not split.holdout:
        raise ConfigError("validation", f"no holdout items are left in task {task.name!r}")
    demos, items = split_demos(task, split.holdout, max(config.eval.shots), seed=config.split_seed)
    return demos, items[:config.holdout_items] if config.holdout_items else items


def holdout_items(task: Task, config: FinetuneConfig) -> list[Any]:
    """The device's holdout items for ``config`` (without the demonstrations)."""
    return eval_split(task, config)[1]


def _open(ref: ModelRef, backend: str, gguf: Path | None, peft_dir: Path | None, config: FinetuneConfig,
          convert_dir: str | Path | None) -> Any:
    if backend == "llama":

        return open_student(ref, "llama", n_threads=config.n_threads, n_gpu_layers=config.n_gpu_layers,
                            lora_path=gguf)

    model, tok = load_hf(ref, convert_dir=convert_dir)
    if peft_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(peft_dir)).merge_and_unload()
    return TorchStudent(model, tok, name=ref.name)


def evaluate_with(ref: ModelRef, backend: str, gguf: Path | None, peft_dir: Path | None, fmt: Any, task: Task,
                  items: Sequence[Any], demos: Sequence[Draft], config: FinetuneConfig,
                  convert_dir: str | Path | None, progress: Progress | None, phase: str) -> dict[int, EvalResult]:
    """Open ``ref`` on ``backend`` with an adapter (``gguf`` for llama, ``peft_dir`` for torch; both None:
    the bare base), evaluate it on ``items`` with ``config.eval`` and close it."""
    student = _open(ref, backend, gguf, peft_dir, config, convert_dir)
    total = len(items) * len(config.eval.shots)
    try:
        return evaluate(student, fmt, task, items, demos, config.eval,
                        progress=(lambda n: progress(phase, n, total)) if progress else None)
    finally:
        student.close()


def finetune(ref: ModelRef, task: Task, records: Sequence[Draft], store: AdapterStore, work_dir: str | Path,
             config: FinetuneConfig = FinetuneConfig(), *, convert_dir: str | Path | None = None,
             progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
             clock: Callable[[], float] = time.monotonic) -> FinetuneResult:
    """Run the job; see the module docstring."""

    if config.backend == "llama" and ref.kind != "gguf":
        raise ModelError(f"the llama evaluation backend needs a GGUF base; {ref.path} is a {ref.kind} model "
                         f"(use backend 'torch')")
    if not records:
        raise ConfigError("data", "the training data has no records")
    demos, items = eval_split(task, config)
    labels = {"training": label_counts(records), "holdout": label_counts(items), "demos": label_counts(demos)}
    work = Path(work_dir)
    current = store.active()
    if current is not None and ref.sha256 and current.base_sha256 not in (None, ref.sha256):
        log.warning("active adapter %s was trained for another base model; comparing with the bare base",
                    current.version)
        current = None
    seconds: dict[str, float] = {}

    t = clock()
    peft_model, tok, sft = run_sft(ref, records, task.instruction, config.sft, work / "sft", convert_dir=convert_dir,
                                   progress=(lambda _step, total, _loss: progress("train", 1, total)) if progress else None,
                                   should_stop=should_stop)
    seconds["train"] = round(clock() - t, 2)
    model_config = peft_model.get_base_model().config.to_dict()
    del peft_model
    gc.collect()
    result = FinetuneResult("incomplete", None, current.version if current else None,
                            current.version if current else None, len(records), len(items), sft.to_dict(),
                            seconds=seconds, labels=labels)
    if sft.status != "done":
        return result

    t = clock()
    adapter_dir = Path(sft.adapter_dir)
    gguf = export_gguf_lora(adapter_dir, work / "adapter.gguf", model_config, dtype=config.gguf_dtype)
    seconds["export"] = round(clock() - t, 2)

    fmt = ChatFormat(tok, task.instruction)
    t = clock()
    old_gguf = current.file("adapter.gguf") if current else None
    old_peft = current.path if current else None
    before = evaluate_with(ref, config.backend, old_gguf, old_peft, fmt, task, items, demos, config, convert_dir,
                           progress, "eval-before")
    seconds["eval_before"] = round(clock() - t, 2)
    t = clock()
    after = evaluate_with(ref, config.backend, Path(gguf.path), adapter_dir, fmt, task, items, demos, config,
                          convert_dir, progress, "eval-after")
    seconds["eval_after"] = round(clock() - t, 2)

    k = config.eval.decide_on
    decision = keep_if_better(before[k].outcomes, after[k].outcomes, alpha=config.eval.alpha,
                              min_gain=config.eval.min_gain)
    decision_d = {**asdict(decision), "shots": k, "compared_with": current.version if current else "base"}
    metrics = {"before": {s: r.summary() for s, r in before.items()},
               "after": {s: r.summary() for s, r in after.items()},
               "task": task.name, "holdout_items": len(items), "eval_mode": config.eval.mode,
               "eval_backend": config.backend, "labels": labels}
    version = store.add({"adapter.gguf": gguf.path,
                         "adapter_model.safetensors": adapter_dir / "adapter_model.safetensors",
                         "adapter_config.json": adapter_dir / "adapter_config.json"},
                        base_model={"name": ref.name, "sha256": ref.sha256,
                                    **dict(zip(("id", "revision"), adapter_base(ref)))}, metrics=metrics,
                        decision=decision_d, training={"config": asdict(config.sft), "result": sft.to_dict()})
    if decision.keep:
        store.activate(version.version)
    active = store.active()
    result.status = "kept" if decision.keep else "rejected"
    result.version = version.version
    result.active = active.version if active else None
    result.before, result.after, result.decision = metrics["before"], metrics["after"], decision_d
    return result
