"""Model runtimes behind the :class:`arte.student.Student` protocol.

``llama`` (GGUF on llama.cpp, the default on devices), ``torch`` (transformers, the GGUF dequantized or an
HF directory) and ``onnx`` (ONNX Runtime via optimum). Each module imports its runtime lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte.backends.hf import TorchStudent
from arte.backends.llama import LlamaCppStudent
from arte.backends.onnx import OnnxStudent
from arte.errors import ConfigError, ModelError
from arte.models import ModelRef

__all__ = ["BACKENDS", "open_student"]

BACKENDS = ("llama", "torch", "onnx")


def open_student(ref: ModelRef, backend: str = "llama", *, n_threads: int | None = None,
                 convert_dir: str | Path | None = None, lora_path: str | Path | None = None,
                 **kwargs: Any) -> Any:
    """Open ``ref`` as a student on ``backend``. ``convert_dir`` caches GGUF→HF conversions (torch) and
    ONNX exports (onnx, unless ``export_dir`` is given)."""
    if backend == "llama":
        if ref.kind != "gguf":
            raise ModelError(f"the llama backend needs a GGUF file; {ref.path} is a {ref.kind} model "
                             f"(use --backend torch)")

        return LlamaCppStudent(ref.path, n_threads=n_threads, lora_path=lora_path, name=ref.name, **kwargs)
    if backend == "torch":
        if n_threads:
            import torch

            torch.set_num_threads(n_threads)

        return TorchStudent.from_ref(ref, convert_dir=convert_dir, **kwargs)
    if backend == "onnx":
        if lora_path is not None:
            raise ConfigError("lora_path", "the onnx backend runs exported models; merge the adapter "
                                           "(arte.export.merge_lora) and export it (arte.backends.onnx.export_onnx)")

        return OnnxStudent.from_ref(ref, n_threads=n_threads, convert_dir=convert_dir, **kwargs)
    raise ConfigError("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
