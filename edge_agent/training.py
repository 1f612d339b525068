"""The run loop's train step: one call from a verified dataset to an evaluated adapter.

Contract: a train step takes a :class:`TrainRequest` (the verified tailored dataset, the private task and
its holdout items, the device profile with its LoRA/batch/sequence limits and time budget, where to write,
the currently active adapter) and returns a :class:`TrainResult` (the exported adapter, its format, and
accuracy before/after on the holdout). The loop decides whether to keep it (:func:`edge_agent.loop`), so a
step never activates anything itself. It raises :class:`TrainingError` (or an :class:`arte.errors.ArteError`)
on failure; the loop retries a few times, then gives the dataset up.

:func:`train_step` is the default: LoRA SFT, export and evaluation by :mod:`arte.finetune` (the library's
fine-tuning module). A build without that module raises :class:`TrainingError` saying so; the loop's
other steps (scoring, reporting, downloads, metrics) do not depend on it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from arte.tasks import Example, Task
from arte.wire import Accuracy
from edge_agent.errors import TrainingError
from firmware_profiles import Profile

__all__ = ["TrainRequest", "TrainResult", "train_step"]


@dataclass(frozen=True)
class TrainRequest:
    dataset_path: Path            # verified JSONL (sha256 and signature checked just before the call)
    task: Task                    # the private task (never sent anywhere)
    holdout: tuple[Example, ...]  # private holdout items for before/after evaluation
    profile: Profile              # runtime, budget.train_seconds, training.* limits
    out_dir: Path                 # where the adapter goes (created by the step)
    model: str = "default"        # 'default', a GGUF file or an HF directory
    base_adapter: Path | None = None


@dataclass(frozen=True)
class TrainResult:
    adapter_path: Path
    adapter_format: str           # "gguf-lora" (llama.cpp) or "onnx" or "peft"
    before: Accuracy
    after: Accuracy


def train_step(req: TrainRequest) -> TrainResult:
    """Fine-tune, export and evaluate with :mod:`arte.finetune`."""
    try:
        importlib.import_module("arte.finetune")
    except ModuleNotFoundError as e:
        if e.name != "arte.finetune":
            raise TrainingError(f"the fine-tuning runtime is not installed ({e.name}): "
                                "pip install 'arte-edge[training]'") from None
        raise TrainingError("this build of arte has no fine-tuning module (arte.finetune): scoring and "
                            "reporting work, training needs an upgrade") from None
    raise TrainingError("arte.finetune is present but this agent does not call it yet: upgrade the agent")
