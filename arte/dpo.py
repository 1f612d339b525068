"""DPO alignment of the teacher: TRL ``DPOTrainer`` + a PEFT LoRA adapter, the base as reference.

Contract: ``align(model_ref, pairs, config, out_dir, progress)`` holds out ``config.holdout_share`` of the
pairs (:func:`split_pairs`, deterministic by ``config.seed``, never trained on), trains a fresh LoRA adapter
on the rest and writes it to ``out_dir`` (PEFT format: ``adapter_config.json``,
``adapter_model.safetensors``, plus the tokenizer) with ``arte_align.json`` beside it: base model name and
sha256, the config, pair counts and the held-out pair ids, the loss curve (loss, margin and learning rate
per step), the DPO reward accuracy and margin before and after training on the held-out pairs and on the
training pairs (``reward``, each labelled), tokens and time. Returns an :class:`AlignResult`.

The objective (Rafailov et al., 2023), as TRL computes it with ``loss_type="sigmoid"``::

    L = -log σ( β [ (log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x)) ] )

π is the base with the adapter, π_ref the same weights with the adapter disabled, so no second copy of
the model is held. The bracket times β is the *reward margin*: 0 for a fresh adapter, and it should rise;
the *reward accuracy* is the share of pairs whose margin is positive. Both are measured with TRL's own
evaluation (``trainer.evaluate``) before and after training, on the held-out pairs (what the adapter
learnt beyond its training data: the judgement that matters) and on up to ``eval_pairs`` training pairs
(labelled ``train``: rising there only shows the pairs were fitted). ``reward_margin`` in the metadata is
the headline: the held-out numbers, or the training ones when no pair could be held out, with ``on``
saying which.

Scale: the TRL config is built first (:func:`dpo_args`; under ``accelerate launch`` with DeepSpeed ZeRO-3
that is what makes ``from_pretrained`` partition the weights as it loads them), then the model is loaded
in the training dtype on this process's device (:func:`load_placement`): bf16 on a GPU that has it, fp32
on the CPU, never a full fp32 copy in host memory first. Options for large teachers: gradient
checkpointing, a 4-bit base (QLoRA: bitsandbytes NF4, CUDA only), precomputed reference log-probs (one
pass of the base before training instead of one per step), TRL's Liger layer kernels (CUDA only; TRL 1.16
already computes log-probs with a fused, chunked LM head, never the full-vocabulary logits). Under
``accelerate launch`` the same call trains on every process (DDP, FSDP or ZeRO-3 by the accelerate config:
``configs/accelerate/``); only the main process writes files.

Checkpoints: with ``save_steps`` > 0 the trainer saves adapter, optimizer, scheduler and RNG state every
``save_steps`` steps into ``checkpoint_dir`` (default ``out_dir/trainer``), keeping the last two;
``resume=True`` continues from the newest one there (the global step, the loss curve and the data order
go on where they stopped). The directory is the trainer's: it is deleted once the adapter is written.

Learning rate (:func:`lr_factor`): linear warm-up over
``floor(warmup_ratio × steps)`` steps, then cosine decay (the paper's schedule), shifted so that no step
runs at learning rate 0: transformers' schedule starts its warm-up at 0, which spends the first step of a
short run on nothing (2 steps with ``warmup_ratio`` 0.1: the first at lr 0, and a mean loss of exactly
ln 2). Runs shorter than ``1 / warmup_ratio`` steps have no warm-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from arte.adapters import stamp_adapter_base
from arte.backends.hf import load_hf
from arte.errors import ConfigError
from arte.models import ModelRef, adapter_base
from arte.pairs import PreferencePair, pair_counts
from arte.progress import Progress, report

__all__ = ["AlignConfig", "AlignResult", "align", "METADATA_FILE", "lora_config", "dpo_args", "load_placement",
           "split_pairs", "warmup_steps", "lr_factor"]

log = logging.getLogger(__name__)

METADATA_FILE = "arte_align.json"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class AlignConfig:
    """DPO + LoRA hyper-parameters.

    Args:
        beta: DPO's β (the paper does not state it; TRL's default 0.1).
        learning_rate: peak learning rate (the paper: 1e-7 for full fine-tuning; LoRA needs far more).
        epochs: passes over the pairs (the paper: 1); ``max_steps`` > 0 overrides it.
        batch_size: pairs per device per step (the paper: 16, as batch × accumulation).
        grad_accum: gradient accumulation steps.
        warmup_ratio: share of steps with linear warm-up (the paper: 0.1; rounded down, see
            :func:`lr_factor`), then cosine decay.
        max_length: prompt + completion tokens kept (TRL truncates the completion; pairs whose prompt
            alone fills it are dropped by TRL).
        lora_r, lora_alpha, lora_dropout, target_modules: the LoRA adapter.
        seed: data order and adapter initialization.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 on CUDA when supported, else fp32), ``fp32`` or ``bf16``.
        gradient_checkpointing: trade compute for memory (off: the default, best for small models).
        load_in_4bit: QLoRA: the frozen base in 4-bit NF4 (bitsandbytes; CUDA only), the adapter in the
            training dtype.
        precompute_ref_log_probs: compute the reference (base) log-probs of every pair once before
            training (TRL), instead of a forward pass of the base per step.
        use_liger_kernel: TRL's Liger layer kernels (RMSNorm, RoPE, SwiGLU; CUDA only, needs the
            ``liger-kernel`` package; TRL 1.16 deprecates it for Hub kernels).
        save_steps: save a resumable checkpoint every this many optimizer steps (0: none).
        eval_pairs: how many training pairs the before/after reward is measured on (0: skip; the
            held-out pairs are always measured).
        holdout_share: share of the pairs held out of training to judge it (:func:`split_pairs`; 0: none).
        logging_steps: loss curve resolution, in optimizer steps.
    """

    beta: float = 0.1
    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    max_length: int = 1024
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    eval_pairs: int = 64
    logging_steps: int = 1
    holdout_share: float = 0.2
    load_in_4bit: bool = False
    precompute_ref_log_probs: bool = False
    use_liger_kernel: bool = False
    save_steps: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):   # configs built from JSON
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        positive = {"beta": self.beta, "learning_rate": self.learning_rate, "epochs": self.epochs}
        for name, v in positive.items():
            if not (v > 0) or not math.isfinite(v):
                raise ConfigError(name, f"must be a finite number > 0, got {v}")
        for name in ("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "logging_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {v!r}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError("max_steps", f"must be -1 (use epochs) or >= 1, got {self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ConfigError("target_modules", "must be a non-empty tuple of module names")
        if self.device not in DEVICES:
            raise ConfigError("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.eval_pairs < 0:
            raise ConfigError("eval_pairs", f"must be >= 0, got {self.eval_pairs}")
        if not 0.0 <= self.holdout_share < 1.0:
            raise ConfigError("holdout_share", f"must be in [0, 1), got {self.holdout_share}")
        if isinstance(self.save_steps, bool) or not isinstance(self.save_steps, int) or self.save_steps < 0:
            raise ConfigError("save_steps", f"must be an integer >= 0, got {self.save_steps!r}")
        for name in ("gradient_checkpointing", "load_in_4bit", "precompute_ref_log_probs", "use_liger_kernel"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")


@dataclass
class AlignResult:
    """Where the adapter is and what training did (the same as ``arte_align.json``)."""

    adapter_dir: Path
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def margin_before(self) -> float | None:
        """The headline reward margin before training (held-out pairs, else training pairs)."""
        return self.metadata.get("reward_margin", {}).get("before")

    @property
    def margin_after(self) -> float | None:
        return self.metadata.get("reward_margin", {}).get("after")

    @property
    def margin_on(self) -> str | None:
        """Which pairs the headline margin was measured on: ``held_out``, ``train`` or None (not measured)."""
        return self.metadata.get("reward_margin", {}).get("on")


def split_pairs(pairs: Sequence[PreferencePair], share: float, seed: int
                ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training pairs, held-out pairs): ``round(share × n)`` pairs held out, at least one when ``share``
    > 0 and there are two pairs or more, and never all of them. Chosen by ``sha256(seed, pair id)``, so the
    split is the same on every process and machine and does not depend on the pairs' order; both lists
    keep the input order."""
    n = len(pairs)
    if share <= 0 or n < 2:
        return list(pairs), []
    k = min(n - 1, max(1, round(share * n)))
    ranked = sorted(pairs, key=lambda p: hashlib.sha256(f"{seed}\x00heldout\x00{p.id}".encode()).hexdigest())
    held = {id(p) for p in ranked[:k]}
    return [p for p in pairs if id(p) not in held], [p for p in pairs if id(p) in held]


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    """Warm-up steps of a run: ``floor(warmup_ratio × total_steps)`` (none for runs shorter than
    ``1 / warmup_ratio`` steps: a warm-up of less than a step only slows the first one)."""
    return int(math.floor(warmup_ratio * total_steps + 1e-9))


def lr_factor(step: int, warmup: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a share of the peak: ``(step + 1) /
    (warmup + 1)`` during the warm-up (never 0), then cosine decay from the peak over the remaining
    steps (the last step stays above 0)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lora_config(config: AlignConfig) -> Any:
    """The PEFT ``LoraConfig`` for ``config``."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", bias="none")


def _resolve_device(config: AlignConfig) -> tuple[bool, bool]:
    """(use_cpu, bf16) for the config on this machine; refuses the CUDA-only options on a CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise ConfigError("device", "cuda was asked for but torch sees no CUDA device")
    use_cpu = config.device == "cpu" or (config.device == "auto" and not cuda)
    if use_cpu and config.load_in_4bit:
        raise ConfigError("load_in_4bit", "a 4-bit base (QLoRA, bitsandbytes) needs a CUDA GPU; on the CPU "
                                          "train on the full-precision base (load_in_4bit=false)")
    if use_cpu and config.use_liger_kernel:
        raise ConfigError("use_liger_kernel", "the Liger kernels are Triton kernels for CUDA GPUs; turn them "
                                              "off on the CPU")
    if config.precision == "bf16":
        return use_cpu, True   # on the CPU too: torch's bf16 autocast (slow without native bf16 units)
    bf16 = config.precision == "auto" and not use_cpu and torch.cuda.is_bf16_supported()
    return use_cpu, bf16


def dpo_args(config: AlignConfig, output_dir: str | Path) -> Any:
    """The TRL ``DPOConfig`` for ``config`` (TRL 1.16: ``max_length`` only, ``bf16``/``use_cpu`` explicit).

    Build it before loading the model: under ``accelerate launch`` with DeepSpeed ZeRO-3 it is what tells
    ``from_pretrained`` to partition the weights while loading them."""
    from trl import DPOConfig

    use_cpu, bf16 = _resolve_device(config)
    return DPOConfig(
        output_dir=str(output_dir), beta=config.beta, learning_rate=config.learning_rate,
        num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, warmup_ratio=config.warmup_ratio,
        lr_scheduler_type="cosine", max_length=config.max_length, seed=config.seed, data_seed=config.seed,
        use_cpu=use_cpu, bf16=bf16, fp16=False, gradient_checkpointing=config.gradient_checkpointing,
        # non-reentrant: the frozen base's inputs need no grad for the LoRA factors' gradients to flow
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        precompute_ref_log_probs=config.precompute_ref_log_probs, use_liger_kernel=config.use_liger_kernel,
        logging_steps=config.logging_steps, save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500, save_total_limit=2, eval_strategy="no", report_to="none",
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0)


def load_placement(config: AlignConfig, args: Any) -> dict[str, Any]:
    """How this process loads the base for training with ``args`` (:func:`dpo_args`): ``load_hf``'s
    ``device`` and ``dtype`` (the training dtype: bf16 when ``args.bf16``, else fp32), and for QLoRA a
    bitsandbytes ``quantization_config``. Under FSDP or ZeRO-3 the weights stay on the CPU (or are
    partitioned as they load) and the trainer places them; otherwise they go straight to ``args.device``
    (this rank's GPU under DDP)."""
    # heavy: torch and transformers, only when aligning
    import torch

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    # accelerate launch passes FSDP by environment; TrainingArguments may not have read it yet
    sharded = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not sharded:
        from transformers.integrations import is_deepspeed_zero3_enabled

        sharded = is_deepspeed_zero3_enabled()
    device = str(args.device)   # sets up the process group under accelerate: FSDP's rank-0-only loading needs it
    placement: dict[str, Any] = {"device": "cpu" if args.use_cpu or sharded else device, "dtype": dtype}
    if config.load_in_4bit:
        # heavy: transformers' bitsandbytes config
        from transformers import BitsAndBytesConfig

        placement["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    return placement


def _progress_callback(progress: Progress | None) -> Any:
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            report(progress, "train", state.global_step, state.max_steps)

    return _Report()


def _margin(trainer: Any, dataset: Any) -> dict[str, float] | None:
    if dataset is None:
        return None
    m = trainer.evaluate(eval_dataset=dataset)
    return {"margin": m.get("eval_rewards/margins"), "accuracy": m.get("eval_rewards/accuracies"),
            "loss": m.get("eval_loss")}


def _reward_summary(evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline ``reward_margin``: held-out pairs when there are any, else the training pairs."""
    on = "held_out" if evals["held_out"]["pairs"] else ("train" if evals["train"]["pairs"] else None)
    if on is None:
        return {"on": None, "pairs": 0, "before": None, "after": None, "accuracy_before": None,
                "accuracy_after": None}
    e = evals[on]
    return {"on": on, "pairs": e["pairs"], "before": e["before"]["margin"], "after": e["after"]["margin"],
            "accuracy_before": e["before"]["accuracy"], "accuracy_after": e["after"]["accuracy"]}


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__}


def align(model_ref: ModelRef, pairs: Sequence[PreferencePair], config: AlignConfig = AlignConfig(),
          out_dir: str | Path = "adapter", progress: Progress | None = None, *,
          convert_dir: str | Path | None = None, checkpoint_dir: str | Path | None = None,
          resume: bool = False) -> AlignResult:
    """Train a LoRA adapter with DPO on ``pairs`` and write it to ``out_dir`` (see the module docstring).

    ``convert_dir`` caches the GGUF→HF conversion (see :func:`arte.backends.hf.load_hf`).
    ``progress("train", step, total_steps)`` is called after each optimizer step. ``checkpoint_dir``
    holds the trainer's checkpoints (``config.save_steps``; default ``out_dir/trainer``); with ``resume``
    training continues from the newest checkpoint there, if any (the same pairs and config are the
    caller's to pass). Stable entry point: the server's job worker calls it by this name.
    """
    if not pairs:
        raise ConfigError("pairs", "no preference pairs to train on")
    from datasets import Dataset
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOTrainer

    class _Trainer(DPOTrainer):
        """TRL's trainer with the schedule of :func:`lr_factor` (no step at learning rate 0)."""

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                w = warmup_steps(config.warmup_ratio, num_training_steps)
                self.lr_scheduler = LambdaLR(optimizer if optimizer is not None else self.optimizer,
                                             lambda step: lr_factor(step, w, num_training_steps))
                self._created_lr_scheduler = True
            return self.lr_scheduler

    t0 = time.perf_counter()
    out = Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out / "trainer"
    train_pairs, held_out = split_pairs(pairs, config.holdout_share, config.seed)
    args = dpo_args(config, ckpt_dir)   # first: ZeRO-3 must be known before the weights load
    placement = load_placement(config, args)
    model, tok = load_hf(model_ref, convert_dir=convert_dir, **placement)
    model.train()
    load_s = time.perf_counter() - t0
    last = get_last_checkpoint(str(ckpt_dir)) if resume and ckpt_dir.is_dir() else None
    train_ds = Dataset.from_list([p.to_trl() for p in train_pairs])
    eval_sets = {"held_out": held_out, "train": train_pairs[:config.eval_pairs]}
    eval_ds = {k: Dataset.from_list([p.to_trl() for p in v]) if v else None for k, v in eval_sets.items()}
    trainer = _Trainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                       peft_config=lora_config(config), callbacks=[_progress_callback(progress)])
    # With tqdm disabled, transformers adds a callback that print()s every log line to stdout; a library
    # must not write to stdout (the CLI's --json owns it), and the losses are kept in the metadata.
    trainer.remove_callback(PrinterCallback)
    if len(trainer.train_dataset) == 0:
        raise ConfigError("max_length", f"every pair's prompt is at least {config.max_length} tokens long; "
                                        f"TRL dropped them all")
    before = {k: _margin(trainer, ds) for k, ds in eval_ds.items()}
    t1, c1 = time.perf_counter(), time.process_time()
    if last is not None:
        log.info("resuming DPO from %s", last)
    train_out = trainer.train(**({"resume_from_checkpoint": last} if last is not None else {}))
    train_s, train_cpu_s = time.perf_counter() - t1, time.process_time() - c1
    after = {k: _margin(trainer, ds) for k, ds in eval_ds.items()}
    evals = {k: {"pairs": len(v), "before": before[k], "after": after[k]} for k, v in eval_sets.items()}
    history = trainer.state.log_history
    losses = [{"step": h["step"], "loss": h["loss"], "margin": h.get("rewards/margins"),
               "lr": h.get("learning_rate")}
              for h in history if "loss" in h and "eval_loss" not in h]
    tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h and "loss" in h), None)
    metadata = {
        "format": "arte-align/2",
        "base_model": {"name": model_ref.name, "kind": model_ref.kind, "sha256": model_ref.sha256},
        "config": asdict(config),
        "pairs": {"total": len(pairs), "trained": len(trainer.train_dataset), "held_out": len(held_out),
                  **pair_counts(pairs), "held_out_ids": [p.id for p in held_out]},
        "steps": trainer.state.global_step,
        "resumed_from_step": _checkpoint_step(last),
        "warmup_steps": warmup_steps(config.warmup_ratio, trainer.state.max_steps),
        "train_loss": train_out.training_loss,
        "losses": losses,
        "reward": evals,
        "reward_margin": _reward_summary(evals),
        "train_tokens": tokens,
        "seconds": {"load": round(load_s, 3), "train": round(train_s, 3), "train_cpu": round(train_cpu_s, 3),
                    "total": round(time.perf_counter() - t0, 3)},
        "device": str(trainer.args.device), "bf16": bool(trainer.args.bf16),
        "load_dtype": str(placement["dtype"]).removeprefix("torch."), "load_in_4bit": config.load_in_4bit,
        "world_size": trainer.args.world_size,
        "versions": _versions(),
    }
    trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        # The pickled TrainingArguments are not needed to use the adapter; the config is in the metadata.
        (out / "training_args.bin").unlink(missing_ok=True)
        shutil.rmtree(ckpt_dir, ignore_errors=True)   # the trainer's: checkpoints only serve a resume
        stamp_adapter_base(out, *adapter_base(model_ref))
        (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
    rm = metadata["reward_margin"]
    log.info("aligned on %d pairs (%d held out) in %d steps: reward margin on the %s pairs %s -> %s, "
             "accuracy %s -> %s", len(train_pairs), len(held_out), metadata["steps"], rm["on"], rm["before"],
             rm["after"], rm["accuracy_before"], rm["accuracy_after"])
    return AlignResult(out, metadata)


def _checkpoint_step(path: str | None) -> int | None:
    """The global step of a ``checkpoint-N`` directory."""
    return int(Path(path).name.rsplit("-", 1)[1]) if path else None
