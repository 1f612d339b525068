"""LoRA supervised fine-tuning of the student, within a device's memory and time budget.

Contract: ``train_lora(model, rows, config, output_dir)`` wraps a transformers causal LM with a PEFT LoRA
adapter, trains it on packed rows (:mod:`arte.sft_data`) and saves the adapter (PEFT format) under
``output_dir/adapter``. ``run_sft(ref, records, instruction, config, output_dir)`` does the whole job from a
model reference (:func:`arte.backends.hf.load_hf`, the GGUF dequantized, so LoRA trains against exactly
the weights llama.cpp runs) and tailored records. Everything is written under ``output_dir``.

* **Loss** on the assistant part only, computed by :func:`arte.chunked_loss.lm_loss_sum` (no full logits;
  only labelled positions reach the LM head). Each optimizer step sums the loss over its micro-batches and
  divides by the step's labelled-token count, so accumulation equals one big batch.
* **Memory budget**: :func:`plan_memory` measures the process's resident memory once the weights are
  loaded and picks the largest micro-batch (a divisor of ``batch_size``; the rest is accumulation) whose
  estimated peak fits ``memory_budget_mb``, turning on gradient checkpointing only if no micro-batch fits
  without it. The estimate is calibrated on SmolLM2-135M (see ``activation_mb_per_token`` and
  ``BF16_EXTRA_MB``).
* **Precision**: ``"bf16"`` runs the matmuls in bf16 with the frozen weights held in bf16 (halving their
  memory) while the adapter, its optimizer state, the residual stream and the loss stay fp32
  (:func:`arte.precision.bf16_matmuls`, which explains why this split keeps the loss on the fp32 curve);
  ``"auto"`` (the default) picks it on CPUs with native bf16 (:func:`arte.precision.resolve_precision`).
  The adapter is saved in fp32, in the same format either way.
* **Time budget / stop**: checked between optimizer steps; the run then checkpoints and returns with
  ``status`` ``"time_budget"`` or ``"stopped"``; calling again with the same ``output_dir`` resumes.
* **Checkpoints** every ``save_every`` steps and at the end (adapter weights, optimizer, scheduler, RNG,
  step), each written to a temporary directory and renamed, so a killed run resumes from the last complete
  one. Batches depend only on (seed, epoch), so a resumed run sees the batches it would have seen. A
  checkpoint of a different config or data is refused (:class:`ConfigError` on ``output_dir``).

Why a hand-written loop rather than TRL's ``SFTTrainer`` (DESIGN prefers TRL/PEFT trainers): PEFT provides
the adapter; what is left is ~80 lines of loop that the device needs to control. TRL 1.16's fused LM head
scores *every* position off Triton devices (its compact path is CUDA/XPU only), so on a CPU it saves memory
but not the head's compute; its ``Trainer`` cannot stop on a wall-clock budget between steps, pick the
micro-batch from measured memory, or resume bit-for-bit from our checkpoints without callbacks as long as
this loop; and it pulls ``datasets``/``pyarrow`` into the device's resident memory. The server's DPO uses
TRL's trainer (where these constraints do not apply).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from arte.adapters import stamp_adapter_base
from arte.backends.hf import load_hf
from arte.chunked_loss import lm_loss_sum
from arte.errors import ConfigError
from arte.families import lora_modules
from arte.models import adapter_base
from arte.precision import DEVICES, PRECISIONS, bf16_matmuls, resolve_precision
from arte.sft_data import ChatFormat, PackedRow, batch_order, encode_records, pack

__all__ = ["SFTConfig", "SFTResult", "MemoryPlan", "plan_memory", "train_lora", "run_sft", "rss_mb",
           "peak_rss_mb", "LORA_TARGETS"]

log = logging.getLogger(__name__)

# The projections a LoRA may target, by their llama names; a family that fuses some (Phi-3: qkv_proj,
# gate_up_proj) gets its fused modules instead (arte.families.lora_modules), which the GGUF export maps too.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STATUSES = ("done", "time_budget", "stopped")
BF16_EXTRA_MB = 200.0


@dataclass(frozen=True)
class SFTConfig:
    """LoRA SFT settings. ``batch_size`` rows (of ``max_length`` tokens) make one optimizer step;
    ``grad_accumulation`` splits them into micro-batches (None: chosen from ``memory_budget_mb``).

    Args:
        rank, alpha, dropout, targets: the LoRA adapter (PEFT ``r``, ``lora_alpha``, ``lora_dropout``,
            ``target_modules``; the GGUF export supports the llama projections in ``LORA_TARGETS``).
        lr, weight_decay, warmup_ratio, max_grad_norm: AdamW, linear warm-up then cosine decay to 0.
        epochs, max_steps: ``max_steps`` (if set) overrides ``epochs``.
        gradient_checkpointing: True/False, or None to use it only when the memory budget needs it.
        threads: torch CPU threads (None: leave torch's setting).
        loss_chunk_tokens: rows of logits computed at a time by the chunked loss.
        memory_budget_mb, time_budget_s: the device's limits (None: none).
        precision: "fp32", "bf16" (bf16 matmuls, fp32 adapter and loss), "fp16" (the same in fp16; CUDA
            only) or "auto" (bf16 where the CPU, or the GPU, has native bf16, else fp32); see
            :mod:`arte.precision`.
        device: where the model trains, "cpu" or "cuda" (a device profile's ``runtime.device``).
        save_every, keep_checkpoints: checkpoint cadence (steps) and how many to keep.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accumulation: int | None = None
    max_length: int = 256
    gradient_checkpointing: bool | None = None
    threads: int | None = None
    seed: int = 0
    loss_chunk_tokens: int = 128
    memory_budget_mb: int | None = None
    time_budget_s: float | None = None
    save_every: int = 20
    keep_checkpoints: int = 2
    precision: str = "auto"
    device: str = "cpu"

    def __post_init__(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(name, f"must be a positive number, got {v!r}")

        for name in ("rank", "alpha", "lr", "epochs", "batch_size", "max_length", "loss_chunk_tokens",
                     "save_every", "keep_checkpoints", "max_grad_norm"):
            positive(name)
        for name in ("max_steps", "grad_accumulation", "threads", "memory_budget_mb", "time_budget_s"):
            positive(name, allow_none=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not self.targets or any(t not in LORA_TARGETS for t in self.targets) or len(set(self.targets)) != len(self.targets):
            raise ConfigError("targets", f"must be distinct names among {', '.join(LORA_TARGETS)}, got {self.targets!r}")
        if self.grad_accumulation is not None and self.batch_size % self.grad_accumulation:
            raise ConfigError("grad_accumulation", f"must divide batch_size={self.batch_size}, got {self.grad_accumulation}")
        if self.max_length < 8:
            raise ConfigError("max_length", f"must be >= 8, got {self.max_length}")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ConfigError("device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision == "fp16" and self.device != "cuda":
            raise ConfigError("precision", "fp16 needs device cuda; on a CPU use bf16, fp32 or auto")

    def fingerprint(self) -> str:
        """Hash of the settings that shape the trajectory (not threads, budgets or checkpoint cadence)."""
        skip = {"threads", "memory_budget_mb", "time_budget_s", "save_every", "keep_checkpoints",
                "grad_accumulation", "gradient_checkpointing", "loss_chunk_tokens", "device"}
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MemoryPlan:
    """How a step is split to fit the memory budget, and the estimate behind it (MiB)."""

    micro_batch: int
    grad_accumulation: int
    gradient_checkpointing: bool
    base_mb: float
    estimated_peak_mb: float


@dataclass
class SFTResult:
    """What a run did. ``tokens`` counts real (non-padding) tokens; ``tokens_per_s`` is over this call's
    training time only (model loading excluded); ``precision`` is the one used ("auto" resolved)."""

    adapter_dir: str
    status: str
    steps: int
    total_steps: int
    resumed_from: int
    n_rows: int
    tokens: int
    label_tokens: int
    seconds: float
    tokens_per_s: float
    losses: list[float]
    plan: MemoryPlan
    peak_rss_mb: float
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["losses"] = [round(x, 5) for x in self.losses]
        return d


def rss_mb() -> float:
    """Resident memory of this process now, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB. On Linux ``VmHWM`` of ``/proc/self/status``: unlike
    ``ru_maxrss``, which a child started by fork + exec inherits from its parent's size at the fork, it
    counts this program's memory only. Elsewhere ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024   # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KiB on Linux


def activation_mb_per_token(model_config: Any, checkpointing: bool) -> float:
    """Training activations kept per token, MiB. A llama block keeps about 12·hidden + 4·intermediate fp32
    values per token for backward (measured on SmolLM2-135M: 13.0 k values, 400 MiB for 256 tokens);
    with checkpointing only each block's input is kept, plus one block while it is recomputed."""
    h, i, n = model_config.hidden_size, model_config.intermediate_size, model_config.num_hidden_layers
    block = (12 * h + 4 * i) * 4 / 2**20
    return (n * h * 4 / 2**20 + block) if checkpointing else n * block


def plan_memory(config: SFTConfig, model_config: Any, base_mb: float, row_tokens: int | None = None,
                precision: str = "fp32") -> MemoryPlan:
    """Pick the micro-batch (and checkpointing) for ``config.memory_budget_mb``; see the module docstring.
    ``base_mb`` is the resident memory with the weights loaded (in ``precision``, resolved); ``row_tokens``
    the longest row's real length (micro-batches are trimmed to it; default ``max_length``). Raises
    ConfigError when nothing fits."""
    length = row_tokens or config.max_length
    slack = 1.15   # allocator fragmentation, measured
    head = config.loss_chunk_tokens * model_config.vocab_size * 4 * 3 / 2**20   # logits chunk + temporaries
    # bf16 peaks ~175 MiB above fp32 beyond what its smaller base accounts for, at any micro-batch (SmolLM2:
    # 175, 135, 209 MiB at micro-batch 1, 2, 4; activations stay fp32 around the bf16 matmuls)
    head += BF16_EXTRA_MB if precision == "bf16" else 0.0
    if config.grad_accumulation is not None:
        sizes = [config.batch_size // config.grad_accumulation]
    else:
        sizes = [d for d in range(config.batch_size, 0, -1) if config.batch_size % d == 0]
    modes = [False, True] if config.gradient_checkpointing is None else [config.gradient_checkpointing]
    budget = config.memory_budget_mb
    est = 0.0
    for ckpt in modes:
        for mb in sizes:
            est = base_mb + mb * length * activation_mb_per_token(model_config, ckpt) * slack + head
            if budget is None or est <= budget:
                return MemoryPlan(mb, config.batch_size // mb, ckpt, round(base_mb, 1), round(est, 1))
    raise ConfigError("memory_budget_mb", f"{budget} MiB is too small: the leanest plan (micro-batch {sizes[-1]} "
                                          f"of {length} tokens, checkpointing {modes[-1]}) needs about "
                                          f"{est:.0f} MiB, {base_mb:.0f} MiB of it for the runtime and weights")


def _rows_fingerprint(rows: Sequence[PackedRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.input_ids, r.labels]).encode())
    return h.hexdigest()[:16]


class _Checkpoints:
    """``output_dir/checkpoints/step-NNNNNN``: written whole to a temporary name, then renamed."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
                      and (p / "state.json").is_file())
        return done[-1] if done else None

    def save(self, step: int, params: dict[str, Any], opt: Any, sched: Any, state: dict[str, Any]) -> Path:
        import torch
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f"step-{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous() for k, v in params.items()}, str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state()}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in self.root.glob("step-*") if not p.name.endswith(".tmp"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: Path, params: dict[str, Any], opt: Any, sched: Any, device: str = "cpu") -> dict[str, Any]:
        import torch
        from safetensors.torch import load_file

        saved = load_file(str(path / "adapter.safetensors"))
        if set(saved) != set(params):
            raise ConfigError("output_dir", f"checkpoint {path} holds other adapter tensors than this run")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
        blob = torch.load(path / "trainer.pt", weights_only=False, map_location=device)
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"].cpu())
        return json.loads((path / "state.json").read_text())


def _touch_weights(model: Any) -> None:
    """One tiny forward, so mmapped weights are resident before memory is measured."""
    import torch

    with torch.no_grad():
        model(input_ids=torch.zeros((1, 4), dtype=torch.long, device=model.device), use_cache=False)


def train_lora(model: Any, rows: Sequence[PackedRow], config: SFTConfig, output_dir: str | Path, *,
               base_name: str = "", base_revision: str | None = None,
               progress: Callable[[int, int, float], None] | None = None, should_stop: Callable[[], bool] | None = None,
               clock: Callable[[], float] = time.monotonic) -> tuple[Any, SFTResult]:
    """Train a LoRA adapter on ``rows``; returns (the PEFT model, the result). See the module docstring.

    ``base_name``/``base_revision`` are what the adapter records as its base (:func:`arte.models.adapter_base`).
    ``model`` is modified in place (PEFT injects the adapter; with bf16 precision its frozen weights are
    then the bf16-rounded values, back in fp32: :func:`run_sft` returns the adapter on a reloaded base). ``progress(step, total_steps, loss)`` is
    called after every optimizer step; ``should_stop()`` is checked before each step.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    if not rows:
        raise ConfigError("data", "no training rows (every record was dropped or the data is empty)")
    if any(len(r.input_ids) != len(rows[0].input_ids) for r in rows):
        raise ConfigError("data", "packed rows must all have the same length")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    precision = resolve_precision(config.precision, device=config.device)
    model.config.use_cache = False
    model.to(config.device)
    peft_model = get_peft_model(model, LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=lora_modules(model.config, config.targets), bias="none", task_type="CAUSAL_LM"))
    with bf16_matmuls(peft_model, precision) if precision != "fp32" else contextlib.nullcontext():
        _touch_weights(peft_model)
        base_mb = rss_mb() + (torch.cuda.memory_allocated() / 2**20 if config.device == "cuda" else 0.0)
        plan = plan_memory(config, model.config, base_mb, max(r.n_tokens for r in rows), precision)
        log.info("memory plan: %s (%s)", plan, precision)
        if plan.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.train()
        params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        opt = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = math.ceil(len(rows) / config.batch_size)
        total = config.max_steps or config.epochs * steps_per_epoch
        sched = get_cosine_schedule_with_warmup(opt, math.ceil(config.warmup_ratio * total), total)

        dev = peft_model.device
        ids = torch.tensor([r.input_ids for r in rows], dtype=torch.long, device=dev)
        pos = torch.tensor([r.position_ids for r in rows], dtype=torch.long, device=dev)
        lab = torch.tensor([r.labels for r in rows], dtype=torch.long, device=dev)
        n_real = [r.n_tokens for r in rows]

        ckpts = _Checkpoints(out, config.keep_checkpoints)
        fingerprint = {"config": config.fingerprint(), "data": _rows_fingerprint(rows), "total_steps": total,
                       "precision": precision}
        step, losses, tokens, label_tokens = 0, [], 0, 0
        latest = ckpts.latest()
        if latest is not None:
            state = _Checkpoints.load(latest, params, opt, sched, config.device)
            if state["fingerprint"] != fingerprint:
                raise ConfigError("output_dir", f"{out} holds checkpoints of another run (config or data differ: "
                                                f"{state['fingerprint']} vs {fingerprint}); use a new directory")
            step, losses = state["step"], state["losses"]
            log.info("resuming from %s (step %d of %d)", latest, step, total)
        resumed_from = step

        def checkpoint() -> None:
            ckpts.save(step, params, opt, sched, {"step": step, "losses": losses, "fingerprint": fingerprint})

        status = "done"
        t0 = clock()
        while step < total:
            if config.time_budget_s is not None and clock() - t0 >= config.time_budget_s:
                status = "time_budget"
                break
            if should_stop is not None and should_stop():
                status = "stopped"
                break
            epoch, k = divmod(step, steps_per_epoch)
            batch = batch_order(len(rows), config.batch_size, seed=config.seed, epoch=epoch)[k]
            n_lab = int((lab[batch] != -100).sum())
            step_loss = 0.0
            for s in range(0, len(batch), plan.micro_batch):
                mb = batch[s:s + plan.micro_batch]
                width = max(n_real[i] for i in mb)   # trim trailing padding shared by the micro-batch
                loss, _ = lm_loss_sum(peft_model, ids[mb, :width], pos[mb, :width], lab[mb, :width],
                                      chunk_tokens=config.loss_chunk_tokens)
                (loss / max(n_lab, 1)).backward()
                step_loss += loss.detach().item()
                tokens += sum(n_real[i] for i in mb)
            torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            label_tokens += n_lab
            losses.append(step_loss / max(n_lab, 1))
            if progress is not None:
                progress(step, total, losses[-1])
            if step % config.save_every == 0 and step < total:
                checkpoint()
        seconds = clock() - t0
        checkpoint()
    adapter_dir = out / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    if base_name:   # PEFT records the local directory it loaded from; ship a resolvable name instead
        stamp_adapter_base(adapter_dir, base_name, base_revision)
    peft_model.eval()
    result = SFTResult(
        adapter_dir=str(adapter_dir), status=status, steps=step, total_steps=total, resumed_from=resumed_from,
        n_rows=len(rows), tokens=tokens, label_tokens=label_tokens, seconds=round(seconds, 3),
        tokens_per_s=round(tokens / seconds, 2) if seconds > 0 else 0.0, losses=losses, plan=plan,
        peak_rss_mb=round(peak_rss_mb(), 1), precision=precision)
    return peft_model, result


def run_sft(ref: Any, records: Sequence[Any], instruction: str, config: SFTConfig, output_dir: str | Path, *,
            convert_dir: str | Path | None = None, progress: Callable[[int, int, float], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> tuple[Any, Any, SFTResult]:
    """Load ``ref`` (GGUF or HF dir), tokenize and pack ``records`` (:class:`arte.drafts.Draft`), train.
    Returns (PEFT model, tokenizer, result); ``result.extra`` lists the records dropped as too long. The
    PEFT model is the adapter on the exact fp32 base (after bf16 training, the base is loaded again)."""

    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    model, tok = load_hf(ref, convert_dir=convert_dir, device=config.device)
    examples, dropped = encode_records(ChatFormat(tok, instruction), records, config.max_length)
    if dropped:
        log.warning("%d of %d records are longer than max_length=%d tokens and were left out",
                    len(dropped), len(records), config.max_length)
    rows = pack(examples, config.max_length, tok.pad_token_id)
    base_name, base_revision = adapter_base(ref)
    peft_model, result = train_lora(model, rows, config, output_dir, base_name=base_name, base_revision=base_revision,
                                    progress=progress, should_stop=should_stop)
    if result.precision != "fp32":
        from peft import PeftModel

        del model, peft_model
        gc.collect()
        base, _ = load_hf(ref, convert_dir=convert_dir, device=config.device)
        peft_model = PeftModel.from_pretrained(base, result.adapter_dir)
    result.extra.update({"n_records": len(records), "n_examples": len(examples), "dropped": dropped})
    return peft_model, tok, result
