"""The agent's student, opened as its firmware profile says.

Contract: :func:`student_options` turns a profile's ``[runtime]`` into the keyword arguments of
:func:`arte.backends.open_student` for its backend: ``n_threads`` (``threads``) always; for ``llama``,
``n_gpu_layers`` (``Runtime.n_gpu_layers``: 0 on the CPU; every layer, or ``gpu_layers``, on ``cuda``); for
``torch``, ``device`` and ``dtype`` (``quantization``: fp32 | fp16 | bf16). :func:`train_options` does the
same for the trainer (``SFTConfig.device`` and ``precision``). :func:`open_profile_student`
opens the model with them, plus the active LoRA adapter on llama. Scoring (the run loop) and the
before/after evaluation of fine-tuning (:mod:`edge_agent.train_step`) both open the student this way, so the
device runs what its profile names. A llama profile on ``cuda`` with a CPU-only build of llama.cpp still
runs (on the CPU cores), with a warning; ``edge-agent doctor`` fails that build against the profile.
"""

from __future__ import annotations

import logging
from typing import Any

from arte.backends import open_student
from arte.home import convert_dir, model_dir
from arte.models import resolve_model
from firmware_profiles import Profile, Runtime

__all__ = ["TORCH_DTYPES", "open_profile_student", "student_options", "train_options"]

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def student_options(runtime: Runtime) -> dict[str, Any]:
    """``open_student`` keyword arguments for ``runtime``'s backend (see the module docstring)."""
    opts: dict[str, Any] = {"n_threads": runtime.threads}
    if runtime.backend == "llama":
        opts["n_gpu_layers"] = runtime.n_gpu_layers
    elif runtime.backend == "torch":
        opts["device"] = runtime.device
        opts["dtype"] = TORCH_DTYPES[runtime.quantization]
    return opts


def train_options(runtime: Runtime) -> dict[str, Any]:
    """``SFTConfig`` keyword arguments for ``runtime``: the ``device`` the student trains on (the profile's;
    ``cuda`` falls back to the CPU, with a warning, where torch has no CUDA) and the training
    ``precision``: a torch profile trains in the dtype it runs (fp32 | bf16 | fp16, fp16 on CUDA only); a
    llama or onnx profile's quantization is its runtime's file format, and it trains on the dequantized
    base in the trainer's own choice ("auto")."""
    device = runtime.device
    if device == "cuda" and not _torch_cuda():
        log.warning("the profile trains on cuda, but this torch has no CUDA device: training on the CPU")
        device = "cpu"
    precision = "auto"
    if runtime.backend == "torch":
        precision = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[runtime.quantization]
        if precision == "fp16" and device != "cuda":
            precision = "auto"
    return {"device": device, "precision": precision}


def open_profile_student(model: str, profile: Profile, adapter: str | None = None) -> Any:
    """Open ``model`` ('default', a GGUF file or an HF directory) on ``profile``'s runtime; ``adapter`` is a
    GGUF LoRA adapter, used on the llama backend."""

    rt = profile.runtime
    if rt.backend == "llama" and rt.device == "cuda" and not _llama_gpu_offload():
        log.warning("profile %s offloads llama.cpp to the GPU, but this llama-cpp-python build is CPU-only: "
                    "running on the CPU. Rebuild: make install LLAMA_CMAKE_ARGS=\"%s\"", profile.id,
                    profile.build.llama_cmake_args)
    ref = resolve_model(model, model_dir())
    lora = {"lora_path": adapter} if adapter and rt.backend == "llama" else {}
    return open_student(ref, rt.backend, convert_dir=convert_dir(), **student_options(rt), **lora)


def _torch_cuda() -> bool:
    import torch  # only when training, which loads torch anyway

    return bool(torch.cuda.is_available())


def _llama_gpu_offload() -> bool:
    import llama_cpp  # only on the llama backend, when the student opens anyway

    return bool(llama_cpp.llama_supports_gpu_offload())
