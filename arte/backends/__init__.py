"""Model runtimes: students (:func:`open_student`) and teachers (:func:`open_teacher`), one way each.

Students (:class:`arte.student.Student`): ``llama`` (GGUF on llama.cpp, the default on devices), ``torch``
(transformers, the GGUF dequantized or an HF directory) and ``onnx`` (ONNX Runtime via optimum).
Teachers (:class:`arte.teacher.Teacher`): ``llama`` (GGUF, ``n_gpu_layers`` offloaded to the GPU; an
adapter is a GGUF LoRA file), ``torch`` (an HF directory or the GGUF dequantized; ``device``, ``dtype``,
``device_map="auto"`` for a model larger than one GPU; an adapter is a PEFT directory) and ``openai``
(any OpenAI-compatible endpoint: vLLM, llama-server; an adapter is the name the endpoint serves it
under). ``auto`` picks ``openai`` with an endpoint, ``torch`` for an HF directory or a PEFT adapter, else
``llama``. Each module imports its runtime lazily; the API key is the caller's to read (``arte`` reads
no environment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte.backends.hf import TorchStudent
from arte.backends.hf_teacher import TorchTeacher
from arte.backends.llama import LlamaCppStudent
from arte.backends.llama_teacher import LlamaCppTeacher
from arte.backends.onnx import OnnxStudent
from arte.backends.openai import OpenAITeacher
from arte.errors import ConfigError, ModelError
from arte.models import ModelRef

__all__ = ["BACKENDS", "LOCAL_BACKENDS", "TEACHER_BACKENDS", "TORCH_DTYPES", "open_student", "open_teacher", "resolve_torch"]

BACKENDS = ("llama", "torch", "onnx")            # students
LOCAL_BACKENDS = ("llama", "torch")              # runtimes that run a teacher and train-evaluate a student here
TEACHER_BACKENDS = ("auto", "llama", "torch", "openai")
TORCH_DTYPES = ("auto", "bf16", "fp16", "fp32")


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


def resolve_torch(device: str = "auto", dtype: str = "auto") -> tuple[str, Any]:
    """``(device, torch dtype)`` for a torch model: ``auto`` is CUDA when torch sees one, and bf16 there
    (fp16 on a GPU without bf16), fp32 on the CPU."""
    # heavy: torch, only for a torch teacher
    import torch

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dtype not in TORCH_DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    elif device.startswith("cuda") and not cuda:
        raise ConfigError("device", f"{device} was asked for but torch sees no CUDA device")
    if dtype == "auto":
        dtype = "fp32" if device == "cpu" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return device, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def open_teacher(ref: ModelRef | None, backend: str = "auto", *, adapter: str | Path | None = None,
                 n_threads: int | None = None, n_gpu_layers: int = 0, device: str = "auto",
                 dtype: str = "auto", device_map: str | None = None, convert_dir: str | Path | None = None,
                 endpoint: str | None = None, endpoint_model: str | None = None, api_key: str | None = None,
                 adapter_name: str = "aligned", **kwargs: Any) -> Any:
    """Open a teacher (:class:`arte.teacher.Teacher`) on ``backend`` (see the module docstring).

    Args:
        ref: the local model (``llama``, ``torch``); None for ``openai``.
        adapter: ``llama``: a GGUF LoRA file; ``torch``: a PEFT adapter directory (loaded as
            ``adapter_name``); ``openai``: the served adapter's name (requests use it as ``model``).
        n_threads: CPU threads (llama.cpp; torch's intra-op threads).
        n_gpu_layers: ``llama``: layers offloaded to the GPU (-1: all).
        device, dtype, device_map: ``torch``: see :func:`resolve_torch`; ``device_map="auto"`` spreads a
            model larger than one GPU over all of them (``device`` is then ignored).
        convert_dir: ``torch``: the GGUF→HF conversion cache.
        endpoint, endpoint_model, api_key: ``openai``: the server root, the served base model, the key
            (the caller reads it from its environment).
        kwargs: the backend class's own options (``n_ctx``, ``n_parallel``; ``batch_size``; ``timeout``,
            ``max_retries``, ``structured_output``, ``concurrency``, ``transport``).
    """
    if backend not in TEACHER_BACKENDS:
        raise ConfigError("backend", f"must be one of {', '.join(TEACHER_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if endpoint:
            backend = "openai"
        elif ref is not None and (ref.kind == "hf" or (adapter is not None and Path(adapter).is_dir())):
            backend = "torch"
        else:
            backend = "llama"
    if backend == "openai":
        if not endpoint or not endpoint_model:
            raise ConfigError("endpoint", "the openai teacher needs an endpoint URL and the served model name")
        if adapter is not None and (isinstance(adapter, Path) or Path(adapter).exists()):
            raise ConfigError("adapter", f"{adapter} is a local path; a remote endpoint uses adapters it serves: "
                                         f"load it there (vLLM /v1/load_lora_adapter, llama.cpp --lora) and "
                                         f"pass its served name")

        return OpenAITeacher(endpoint, endpoint_model, adapter=str(adapter) if adapter else None, api_key=api_key,
                             **kwargs)
    if ref is None:
        raise ConfigError("model", f"the {backend} teacher needs a local model")
    if backend == "llama":
        if ref.kind != "gguf":
            raise ModelError(f"the llama teacher needs a GGUF file; {ref.path} is a {ref.kind} model "
                             f"(use the torch backend, or an endpoint that serves it)")
        if adapter is not None and not Path(adapter).is_file():
            raise ModelError(f"the llama teacher applies a GGUF LoRA adapter file; {adapter} is not one (a PEFT "
                             f"adapter directory needs the torch backend, or arte.export.export_gguf_lora)")

        return LlamaCppTeacher(ref.path, n_threads=n_threads, n_gpu_layers=n_gpu_layers, lora_path=adapter,
                               name=ref.name, **kwargs)
    if n_threads:
        import torch

        torch.set_num_threads(n_threads)

    torch_device, torch_dtype = resolve_torch(device, dtype)
    return TorchTeacher.from_ref(ref, convert_dir=convert_dir, device=torch_device, dtype=torch_dtype,
                                 device_map=device_map, adapters={adapter_name: str(adapter)} if adapter else None,
                                 **kwargs)
