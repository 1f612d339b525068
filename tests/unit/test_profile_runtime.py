"""Every firmware profile's runtime and build settings reach what the agent runs: the student it opens for
scoring, the evaluation of fine-tuning, the doctor; and no profile key is one that nothing reads."""

from __future__ import annotations

import ast
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import pytest

import arte.backends as backends
import arte.backends.hf as hf
import arte.backends.onnx as onnx
import edge_agent.student as student
from arte.backends.llama_check import BASELINE_CMAKE_ARGS
from firmware_profiles import PROFILE_DIR, Build, Profile, load_profiles

ROOT = Path(__file__).resolve().parents[2]
PROFILES = load_profiles()
IDS = sorted(PROFILES)


class _Opened(Exception):
    """Raised by the recording stand-ins instead of loading a model."""

    def __init__(self, backend: str, kwargs: dict[str, Any]) -> None:
        self.backend, self.kwargs = backend, kwargs


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Stand-ins for the three runtimes that record what they would have been opened with."""
    def rec(backend: str) -> Any:
        def opened(*args: Any, **kwargs: Any) -> Any:
            raise _Opened(backend, kwargs)
        return opened

    monkeypatch.setattr(backends, "LlamaCppStudent", rec("llama"))
    monkeypatch.setattr(hf.TorchStudent, "from_ref", rec("torch"))
    monkeypatch.setattr(onnx.OnnxStudent, "from_ref", rec("onnx"))
    monkeypatch.setattr(student, "_llama_gpu_offload", lambda: True)
    monkeypatch.setattr(student, "_torch_cuda", lambda: True)
    model = tmp_path / "student.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    return model


def _open(model: Path, profile: Profile, adapter: str | None = None) -> _Opened:
    with pytest.raises(_Opened) as exc:
        student.open_profile_student(str(model), profile, adapter)
    return exc.value


@pytest.mark.parametrize("pid", IDS)
def test_the_profile_runtime_reaches_the_student(pid: str, recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = PROFILES[pid]
    rt = p.runtime
    if rt.backend == "torch":
        torch = pytest.importorskip("torch")
        monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.append(n))
    threads: list[int] = []
    got = _open(recorded, p, "/adapters/v1/adapter.gguf")
    assert got.backend == rt.backend
    assert (threads[-1] if rt.backend == "torch" else got.kwargs["n_threads"]) == rt.threads
    if rt.backend == "llama":
        assert got.kwargs["n_gpu_layers"] == (-1 if rt.device == "cuda" else 0)
        assert got.kwargs["lora_path"] == "/adapters/v1/adapter.gguf"
    if rt.backend == "torch":
        assert got.kwargs["device"] == rt.device
        assert got.kwargs["dtype"] == {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[rt.quantization]
        assert "lora_path" not in got.kwargs


def test_gpu_layers_and_the_cpu_fallback(recorded: Path, caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    nano = PROFILES["jetson-orin-nano"]
    part = dataclasses.replace(nano, runtime=dataclasses.replace(nano.runtime, gpu_layers=12))
    assert _open(recorded, part).kwargs["n_gpu_layers"] == 12
    monkeypatch.setattr(student, "_llama_gpu_offload", lambda: False)
    with caplog.at_level(logging.WARNING, logger="edge_agent.student"):
        assert _open(recorded, nano).kwargs["n_gpu_layers"] == -1
    assert "CPU-only" in caplog.text and "-DGGML_CUDA=on" in caplog.text


@pytest.mark.parametrize("pid", IDS)
def test_fine_tuning_evaluates_on_the_profile_runtime(pid: str, recorded: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_agent.train_step as step
    from arte.tasks import Example, Task
    from edge_agent.train_step import TrainRequest, train_step

    seen: dict[str, Any] = {}

    def finetune(ref: Any, task: Any, records: Any, store: Any, work: Any, config: Any, **kw: Any) -> Any:
        seen["config"] = config
        raise _Opened("finetune", {})

    monkeypatch.setattr(step, "finetune", finetune)
    p = PROFILES[pid]
    task = Task(name="t", description="", examples=(Example("e0", "q", ("a",), ("a", "b")),))
    req = TrainRequest(dataset_path=ROOT / "tests/data/drafts_navigate.jsonl", task=task, holdout=(), profile=p,
                       out_dir=tmp_path / "out", model=str(recorded))
    with pytest.raises(_Opened):
        train_step(req)
    cfg = seen["config"]
    assert cfg.n_threads == p.runtime.threads and cfg.sft.threads == p.runtime.threads
    assert cfg.backend == p.runtime.backend
    assert cfg.n_gpu_layers == (p.runtime.n_gpu_layers if p.runtime.backend == "llama" else 0)
    assert cfg.sft.rank == p.training.lora_rank and cfg.sft.memory_budget_mb == p.budget.memory_mib
    # the trainer runs where the student runs, in the dtype a torch student runs in
    assert cfg.sft.device == p.runtime.device
    assert cfg.sft.precision == (p.runtime.quantization if p.runtime.backend == "torch" else "auto")


def test_training_falls_back_to_the_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A cuda profile on a torch without CUDA trains on the CPU (warned), and fp16, which needs CUDA,
    becomes the CPU's own choice; the options are valid SFT settings either way."""
    from arte.sft import SFTConfig

    agx = PROFILES["jetson-agx-orin"].runtime
    assert agx.backend == "torch" and agx.device == "cuda" and agx.quantization == "fp16"
    monkeypatch.setattr(student, "_torch_cuda", lambda: True)
    assert student.train_options(agx) == {"device": "cuda", "precision": "fp16"}
    monkeypatch.setattr(student, "_torch_cuda", lambda: False)
    with caplog.at_level(logging.WARNING, logger="edge_agent.student"):
        opts = student.train_options(agx)
    assert opts == {"device": "cpu", "precision": "auto"} and "training on the CPU" in caplog.text
    for pid in IDS:
        SFTConfig(**student.train_options(PROFILES[pid].runtime))


def _attributes_read(path: Path, properties_only: bool = False) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef):
            if properties_only and not any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
                continue
            names |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    return names


def test_no_profile_key_is_one_that_nothing_reads() -> None:
    """Every field of every profile table is read by the agent (edge_agent/) or by a property the agent
    reads (``Runtime.n_gpu_layers`` reads ``gpu_layers``); validation alone does not count."""
    read = set().union(*(_attributes_read(f) for f in (ROOT / "edge_agent").glob("*.py")))
    read |= _attributes_read(PROFILE_DIR / "__init__.py", properties_only=True)
    tables = [f.name for f in dataclasses.fields(Profile) if dataclasses.is_dataclass(f.type) or f.name in
              ("match", "runtime", "budget", "training", "scoring", "when", "build")]
    assert {"runtime", "build", "when"} <= set(tables)
    unread = [f"{t}.{f.name}" for t in tables for f in dataclasses.fields(getattr(PROFILES["laptop-cpu"], t))
              if f.name not in read]
    assert not unread, f"profile keys nothing reads: {unread}"


@pytest.mark.parametrize("pid", IDS)
def test_build_flags_agree_with_the_runtime_and_the_architecture(pid: str) -> None:
    p = PROFILES[pid]
    args = p.build.llama_cmake_args
    if p.runtime.backend != "llama":
        assert args == ""
        return
    assert (p.runtime.device == "cuda") == p.build.cuda
    if p.match.arch == ("aarch64",):
        assert re.search(r"-DGGML_CPU_ARM_ARCH=armv8\.\d-a", args), "an ARM board names its ARM architecture"
        assert args.startswith(BASELINE_CMAKE_ARGS["aarch64"]), "the board has (at least) the aarch64 baseline"
    else:
        assert args == "", "a class spanning architectures uses the Makefile's per-architecture baseline"


def test_the_profiles_page_gives_every_profile_build() -> None:
    page = (ROOT / "docs" / "profiles.md").read_text()
    for p in PROFILES.values():
        if p.build.llama_cmake_args:
            assert p.build.llama_cmake_args in page, f"docs/profiles.md lacks the build of {p.id}"


def test_build_table_defaults_to_the_baseline() -> None:
    assert Build().llama_cmake_args == "" and not Build().cuda
    assert Build("-DGGML_NATIVE=OFF -DGGML_CUDA=ON").cuda


def test_the_threads_setting_overrides_the_profile(recorded: Path, tmp_path: Path) -> None:
    """`edge-agent config set threads N` (several agents sharing one machine, as the demo runs them) reaches
    the student the run loop opens; without it the profile's threads do; a bad value is refused by name."""
    from arte.errors import ConfigError
    from edge_agent.cli import _profile
    from edge_agent.config import validate_setting
    from edge_agent.state import State

    with State(tmp_path / "state") as st:
        st.set(profile="laptop-cpu")
        assert _profile(st, None).runtime.threads == PROFILES["laptop-cpu"].runtime.threads == 2
        st.set(threads=validate_setting("threads", "1"))
        p = _profile(st, None)
    assert p.runtime.threads == 1 and p.runtime.backend == PROFILES["laptop-cpu"].runtime.backend
    assert _open(recorded, p).kwargs["n_threads"] == 1
    for bad in ("0", "-2", "two", "257"):
        with pytest.raises(ConfigError, match="threads"):
            validate_setting("threads", bad)
