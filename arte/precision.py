"""Mixed precision for LoRA training on a CPU: bf16 matmuls, everything else fp32.

Contract: ``resolve_precision(precision, flags)`` turns an ``SFTConfig.precision`` (``"auto"``, ``"fp32"``,
``"bf16"``) into ``"fp32"`` or ``"bf16"``; ``"auto"`` picks bf16 only on a CPU with native bf16 dot
products (x86 ``avx512_bf16`` or ``amx_bf16``, read from ``/proc/cpuinfo`` by :func:`host_cpu_flags`).
``bf16_matmuls(model)`` is a context manager that, while open, holds every frozen ``Linear``/``Embedding``
weight of ``model`` in bf16 (their fp32 values are dropped: that is half of the memory saving) and casts
around those modules: a ``Linear`` gets its input in bf16 and hands its output back in fp32, an
``Embedding`` hands its output back in fp32. On exit the weights are cast back to fp32, so the model is a
plain fp32 model again, on the bf16-rounded weights (relative error at most 2^-9).

Why this split rather than ``torch.autocast`` or a model converted to bf16 throughout (all three measured
on SmolLM2-135M, ``benchmarks/sft.py``): in both of those, a projection's output is bf16, and the LoRA
update is added to it in bf16. The base output is already a bf16 value, so an update smaller than half its
rounding step (every update early in training: LoRA's B starts at zero) rounds back to the base value and
vanishes from the forward pass. The adapter still trains about as well (its gradients barely depend on
it), but the forward pass cannot see it: with the model in bf16, after 6 steps the training loss on
held-out rows was 0.077 above that of the very same adapter evaluated in fp32, 21% of what training had
gained; the plain loop under autocast ran up to 0.086 above its fp32 twin. Here the base output is cast
to fp32 *before* the update is added, and the residual stream, norms, attention and the LoRA factors stay
fp32: the loss stays within 0.006-0.013 of fp32 training. The matmuls, which are most of the work, run in
bf16 (oneDNN), and the frozen weights take half the memory. Activations are not smaller (they are fp32),
so the memory budget buys the same micro-batches; the planner allows bf16 some extra (``plan_memory``).

On a CPU without native bf16 (AVX2, most ARM cores) bf16 matmuls are emulated and slower than fp32, so
``"auto"`` keeps fp32 there. ARM cores with the ``bf16`` feature (Neoverse V1/V2) are left on fp32 too: not
measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from arte.errors import ConfigError

__all__ = ["BF16_FLAGS", "PRECISIONS", "DEVICES", "bf16_matmuls", "host_cpu_flags", "parse_cpu_flags",
           "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")
# CPU flags (as Linux names them) of native bf16 dot products, which oneDNN uses for bf16 matmuls
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The CPU feature flags in the text of ``/proc/cpuinfo`` (x86 ``flags`` lines, ARM ``Features`` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def host_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags: parsed from ``cpuinfo`` (Linux); where that file cannot be read, torch's
    own check for ``avx512_bf16`` (the one flag :func:`resolve_precision` needs; AMX CPUs have it too)."""
    try:
        return parse_cpu_flags(Path(cpuinfo).read_text())
    except OSError:
        import torch

        return frozenset({"avx512_bf16"} if torch.cpu._is_avx512_bf16_supported() else ())


def resolve_precision(precision: str, flags: Iterable[str] | None = None, device: str = "cpu") -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for an ``SFTConfig.precision`` on ``device``; ``flags`` default
    to :func:`host_cpu_flags`. fp16 is for CUDA only (a CPU emulates it); ``"auto"`` on CUDA is bf16 where
    the GPU has it (Ampere and later, Jetson Orin included), else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device not in DEVICES:
        raise ConfigError("device", f"must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision == "fp16" and device != "cuda":
        raise ConfigError("precision", "fp16 matmuls need device cuda; on a CPU use bf16 or fp32")
    if precision != "auto":
        return precision
    if device == "cuda":
        # heavy: torch, only to ask the GPU
        import torch

        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    have = frozenset(host_cpu_flags() if flags is None else flags)
    return "bf16" if any(f in have for f in BF16_FLAGS) else "fp32"


def _cast_input(module: Any, args: tuple) -> tuple:
    return (args[0].to(module.weight.dtype),) + args[1:]


def _output_to_fp32(module: Any, args: tuple, output: Any) -> Any:
    return output.float()


@contextlib.contextmanager
def bf16_matmuls(model: Any, precision: str = "bf16") -> Iterator[None]:
    """While open, ``model``'s frozen ``Linear`` and ``Embedding`` weights are bf16 (``precision="fp16"``:
    fp16, on CUDA) and cast around; see the module docstring. Open it once PEFT has injected the adapter
    and frozen the base: trainable weights (the adapter's) are left in fp32. Tied weights stay one tensor."""
    import torch

    bf16 = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    groups: dict[int, list[Any]] = {}   # modules by weight tensor: tied weights get one bf16 copy
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and m.weight.dtype == torch.float32 \
                and not m.weight.requires_grad:
            groups.setdefault(id(m.weight), []).append(m)
    hooks = []
    for ms in groups.values():
        w = torch.nn.Parameter(ms[0].weight.detach().to(bf16), requires_grad=False)
        for m in ms:
            m.weight = w
            if isinstance(m, torch.nn.Linear):
                hooks.append(m.register_forward_pre_hook(_cast_input))
            hooks.append(m.register_forward_hook(_output_to_fp32))
    # Weights loaded from safetensors are views of one memory-mapped file; copying what stays fp32 lets
    # the mapping (the dropped fp32 weights' pages included) go.
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype != bf16:
                p.data = p.data.clone()
        for b in model.buffers():
            b.data = b.data.clone()
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for ms in groups.values():
            w = torch.nn.Parameter(ms[0].weight.detach().float(), requires_grad=False)
            for m in ms:
                m.weight = w
