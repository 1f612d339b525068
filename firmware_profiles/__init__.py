"""Firmware profiles: what the agent may do on one class of device, as data (one TOML file per class).

Contract: :func:`load_profile` reads one ``*.toml`` file into a frozen :class:`Profile` and validates every
field; a bad file raises :class:`ProfileError` naming the file and the dotted field (``training.lora_rank``).
:func:`load_profiles` loads every file of a directory (default: this package's). The schema is the
dataclasses below, nothing else; unknown keys are refused so a typo never silently falls back to a default.

A file has these tables (every key is required unless it has a default below)::

    id, name, description
    [match]     how auto-detection recognises the device (all given conditions must hold):
                device_tree (substrings of /proc/device-tree/model), arch, nvidia_gpu, min_memory_gib
    [runtime]   backend (llama | torch | onnx), quantization, threads, device (cpu | cuda),
                gpu_layers (llama on cuda: layers to offload; default all)
    [build]     llama_cmake_args: the llama.cpp build this class needs (``make install LLAMA_CMAKE_ARGS=``);
                empty: the Makefile's portable baseline. Only for the llama backend.
    [budget]    memory_mib, score_seconds, train_seconds
    [training]  lora_rank, lora_alpha, batch_size, max_seq_len, max_examples
    [scoring]   max_items, max_drafts, mode (arte.scoring.MODES: cot-choice | generate | loglik), max_new_tokens
    [when]      only_when_idle, max_load_per_core, only_on_ac_power, max_temperature_c
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from arte.errors import ArteError, ConfigError
from arte.scoring import DEFAULT_MODE
from arte.scoring import MODES as SCORING_MODES

__all__ = ["PROFILE_DIR", "BACKENDS", "QUANTIZATIONS", "DEVICES", "Match", "Runtime", "Build", "Budget", "Training",
           "Scoring", "When", "Profile", "ProfileError", "load_profile", "load_profiles"]

PROFILE_DIR = Path(__file__).resolve().parent
BACKENDS = ("llama", "torch", "onnx")
# What each runtime can load: GGUF quant types for llama.cpp, dtypes for torch, ONNX weight types.
QUANTIZATIONS = {
    "llama": ("Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q8_0", "F16"),
    "torch": ("fp32", "fp16", "bf16"),
    "onnx": ("fp32", "int8"),
}
ARCHES = ("x86_64", "aarch64")
DEVICES = ("cpu", "cuda")


class ProfileError(ArteError, ValueError):
    """A profile file is unreadable or invalid: names the file and the dotted field."""

    def __init__(self, path: str | Path, field: str | None, problem: str) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}: " + (f"field {field!r}: " if field else "") + problem)


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(name, problem)


def _positive_int(value: Any, name: str, upper: int | None = None) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
           f"must be a positive integer, got {value!r}")
    if upper is not None:
        _check(value <= upper, name, f"must be at most {upper}, got {value}")


def _positive_number(value: Any, name: str) -> None:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, name,
           f"must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Match:
    """Detection rules; a profile matches when every condition it sets holds. More conditions = more
    specific: auto-detection picks the matching profile with the most conditions."""

    device_tree: tuple[str, ...] = ()
    arch: tuple[str, ...] = ()
    nvidia_gpu: bool | None = None
    min_memory_gib: float = 0.0

    def __post_init__(self) -> None:
        _check(all(isinstance(s, str) and s for s in self.device_tree), "device_tree",
               "must be a list of non-empty strings")
        bad = [a for a in self.arch if a not in ARCHES]
        _check(not bad, "arch", f"unknown architecture {bad[0] if bad else ''!r}; one of {', '.join(ARCHES)}")
        _check(self.nvidia_gpu is None or isinstance(self.nvidia_gpu, bool), "nvidia_gpu",
               f"must be true or false, got {self.nvidia_gpu!r}")
        _check(isinstance(self.min_memory_gib, (int, float)) and self.min_memory_gib >= 0, "min_memory_gib",
               f"must be a number >= 0, got {self.min_memory_gib!r}")

    @property
    def n_conditions(self) -> int:
        return (bool(self.device_tree) + bool(self.arch) + (self.nvidia_gpu is not None)
                + (self.min_memory_gib > 0))


@dataclass(frozen=True)
class Runtime:
    """The student's runtime: ``backend``, the model's ``quantization`` (valid for that backend), CPU
    ``threads`` and the compute ``device``. On ``cuda``, the llama backend offloads ``gpu_layers`` layers
    (None: all of them) and needs a CUDA build of llama.cpp (see ``[build]``); torch moves the whole model."""

    backend: str
    quantization: str
    threads: int
    device: str = "cpu"
    gpu_layers: int | None = None

    def __post_init__(self) -> None:
        _check(self.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        allowed = QUANTIZATIONS[self.backend]
        _check(self.quantization in allowed, "quantization",
               f"{self.quantization!r} is not a {self.backend} quantization; one of {', '.join(allowed)}")
        _positive_int(self.threads, "threads", 256)
        _check(self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(not (self.device == "cuda" and self.backend == "onnx"), "device",
               "the onnx backend runs on the CPU here; use backend llama or torch for cuda")
        if self.gpu_layers is not None:
            _check(self.backend == "llama" and self.device == "cuda", "gpu_layers",
                   "only the llama backend on device = \"cuda\" offloads layers")
            _positive_int(self.gpu_layers, "gpu_layers", 100000)

    @property
    def n_gpu_layers(self) -> int:
        """What llama.cpp's ``n_gpu_layers`` gets: 0 on the CPU, -1 (all) or ``gpu_layers`` on cuda."""
        if self.device != "cuda":
            return 0
        return -1 if self.gpu_layers is None else self.gpu_layers


@dataclass(frozen=True)
class Build:
    """How llama.cpp is built for this device class: the CMake flags for ``make install LLAMA_CMAKE_ARGS=...``
    (or ``CMAKE_ARGS=... pip install llama-cpp-python``). Empty: the Makefile's portable baseline for the
    architecture. Flags for a class of devices, so never ``-DGGML_NATIVE=ON`` (tied to one CPU)."""

    llama_cmake_args: str = ""

    def __post_init__(self) -> None:
        _check(isinstance(self.llama_cmake_args, str), "llama_cmake_args", "must be a string")
        _check(not self.llama_cmake_args or "-DGGML_NATIVE=OFF" in self.llama_cmake_args.split(), "llama_cmake_args",
               "a device class needs a portable build: include -DGGML_NATIVE=OFF")

    @property
    def cuda(self) -> bool:
        return any(a.upper() in ("-DGGML_CUDA=ON", "-DGGML_CUDA=1") for a in self.llama_cmake_args.split())


@dataclass(frozen=True)
class Budget:
    """Resource ceilings: resident memory for the student and trainer, wall time per scoring and per
    training run."""

    memory_mib: int
    score_seconds: float
    train_seconds: float

    def __post_init__(self) -> None:
        _positive_int(self.memory_mib, "memory_mib")
        _positive_number(self.score_seconds, "score_seconds")
        _positive_number(self.train_seconds, "train_seconds")


@dataclass(frozen=True)
class Training:
    """LoRA fine-tuning limits."""

    lora_rank: int
    lora_alpha: int
    batch_size: int
    max_seq_len: int
    max_examples: int

    def __post_init__(self) -> None:
        _positive_int(self.lora_rank, "lora_rank", 256)
        _positive_int(self.lora_alpha, "lora_alpha", 1024)
        _positive_int(self.batch_size, "batch_size", 1024)
        _positive_int(self.max_seq_len, "max_seq_len", 32768)
        _positive_int(self.max_examples, "max_examples")


@dataclass(frozen=True)
class Scoring:
    """Scoring limits: validation items and drafts per round, the mode, the generation budget, and item
    selection by IRT (``irt_keep_items``). A round's mode is the server's; ``mode`` is the device's own
    (its before/after evaluation, and local scoring). ``max_new_tokens`` caps a round's generation budget."""

    max_items: int
    max_drafts: int
    mode: str = DEFAULT_MODE
    max_new_tokens: int = 96
    # After a round scored on all items, keep only this many items (the most discriminative by a 2PL IRT fit
    # on the device's own outcomes) for later rounds; 0 keeps every item.
    irt_keep_items: int = 0
    irt_min_drafts: int = 8

    def __post_init__(self) -> None:
        _positive_int(self.max_items, "max_items")
        _positive_int(self.max_drafts, "max_drafts")
        _check(isinstance(self.irt_keep_items, int) and 0 <= self.irt_keep_items <= self.max_items,
               "irt_keep_items", f"must be an integer in [0, max_items={self.max_items}]")
        _positive_int(self.irt_min_drafts, "irt_min_drafts")
        _check(self.mode in SCORING_MODES, "mode", f"must be one of {', '.join(SCORING_MODES)}, got {self.mode!r}")
        _positive_int(self.max_new_tokens, "max_new_tokens", 4096)


@dataclass(frozen=True)
class When:
    """When work (scoring, training) may run: only when the device is idle (1-minute load per core at most
    ``max_load_per_core``), only on AC power, only below a temperature. Network steps always run."""

    only_when_idle: bool = False
    max_load_per_core: float = 0.5
    only_on_ac_power: bool = False
    max_temperature_c: float | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.only_when_idle, bool), "only_when_idle", "must be true or false")
        _check(isinstance(self.only_on_ac_power, bool), "only_on_ac_power", "must be true or false")
        _positive_number(self.max_load_per_core, "max_load_per_core")
        _check(self.max_temperature_c is None or (isinstance(self.max_temperature_c, (int, float))
                                                  and 0 < self.max_temperature_c < 150),
               "max_temperature_c", f"must be in (0, 150) degrees C, got {self.max_temperature_c!r}")


@dataclass(frozen=True)
class Profile:
    """One device class."""

    id: str
    name: str
    description: str
    match: Match
    runtime: Runtime
    budget: Budget
    training: Training
    scoring: Scoring
    when: When = field(default_factory=When)
    build: Build = field(default_factory=Build)
    path: str = ""

    def __post_init__(self) -> None:
        _check(isinstance(self.id, str) and self.id.replace("-", "").isalnum() and self.id == self.id.lower(),
               "id", f"must be lowercase letters, digits and '-', got {self.id!r}")
        _check(isinstance(self.name, str) and bool(self.name.strip()), "name", "must be a non-empty string")
        llama = self.runtime.backend == "llama"
        _check(llama or not self.build.llama_cmake_args, "build.llama_cmake_args",
               f"only the llama backend uses llama.cpp; this profile's backend is {self.runtime.backend}")
        _check(not (llama and self.runtime.device == "cuda") or self.build.cuda, "build.llama_cmake_args",
               "runtime.device = \"cuda\" with the llama backend needs a CUDA build: include -DGGML_CUDA=on")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d


_SECTIONS = {"match": Match, "runtime": Runtime, "budget": Budget, "training": Training, "scoring": Scoring,
             "when": When, "build": Build}


def _build(cls: type, data: Any, path: Path, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ProfileError(path, prefix, f"expected a table, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ProfileError(path, f"{prefix}.{unknown[0]}", f"unknown key (known: {', '.join(names)})")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ProfileError(path, f"{prefix}.{missing[0]}", "missing")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ProfileError(path, f"{prefix}.{e.field}", e.problem) from None


def load_profile(path: str | Path) -> Profile:
    """Load and validate one profile file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(p, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(p, None, f"cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(p, None, f"invalid TOML: {e}") from None
    top = {"id", "name", "description", *_SECTIONS}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ProfileError(p, unknown[0], f"unknown key (known: {', '.join(sorted(top))})")
    for key in ("id", "name", "description", "match", "runtime", "budget", "training", "scoring"):
        if key not in data:
            raise ProfileError(p, key, "missing")
    if p.stem != data["id"]:
        raise ProfileError(p, "id", f"must equal the file name {p.stem!r}, got {data['id']!r}")
    sections = {k: _build(cls, data[k], p, k) for k, cls in _SECTIONS.items() if k in data}
    try:
        return Profile(id=data["id"], name=data["name"], description=data["description"], path=str(p),
                       **sections)
    except ConfigError as e:
        raise ProfileError(p, e.field, e.problem) from None


def load_profiles(directory: str | Path = PROFILE_DIR) -> dict[str, Profile]:
    """Every ``*.toml`` profile in ``directory``, by id."""
    return {p.id: p for p in (load_profile(f) for f in sorted(Path(directory).glob("*.toml")))}
