"""``edge-agent doctor``: is this device ready, and if not, what to fix.

Contract: :func:`run_checks` returns one :class:`Check` per concern — hardware and the profile picked for
it (with the reason), runtimes (llama.cpp, torch), the model (resolved and sha256-verified), disk, memory
against the profile's budget, the state dir and device key, enrollment, the private data, the "when work
may run" rules right now, the fine-tuning module and, when enrolled and asked, the server. ``fail`` means
the agent cannot work until the ``fix`` is applied; ``warn`` means it works with a limitation.

Given ``llama_check`` (:func:`arte.backends.llama_check.self_check`), the ``llama_cpp.build`` check runs a
real batch on the model in a child process with the profile's threads and GPU layers: a build that crashes
(SIGILL from instructions this CPU cannot execute, ...) fails, never "ok", with the signal, the features and
the rebuild command. Its ``data`` (the build's CPU features, GPU offload, the batch result, this CPU's
features, and whether the build matches the profile: GPU offload for a ``cuda`` profile, the profile's
``[build]`` flags, the model's quantization) is what ``doctor --json`` shows as ``llama_cpp``.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from arte.errors import ArteError, ModelError
from arte.home import model_dir
from arte.models import resolve_model
from arte.tasks import load_task
from edge_agent.errors import AgentError
from edge_agent.hardware import GIB, Hardware, match_profile, work_blockers
from edge_agent.state import State
from firmware_profiles import Profile, ProfileError, load_profiles

__all__ = ["Check", "run_checks"]

MIN_FREE_BYTES = 512 * 1024 ** 2
WARN_FREE_BYTES = 2 * GIB


@dataclass(frozen=True)
class Check:
    name: str
    status: str                 # ok | warn | fail
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict, compare=False)   # structured facts, for --json

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("data")
        return d


def _hardware(hw: Hardware) -> Check:
    mem = f"{hw.memory_total / GIB:.1f} GiB" if hw.memory_total else "unknown memory"
    parts = [f"{hw.arch or 'unknown arch'}", hw.cpu_model or "unknown CPU", f"{hw.cpu_cores} cores", mem]
    if hw.device_tree_model:
        parts.append(f"board {hw.device_tree_model!r}")
    parts.append(f"GPUs: {', '.join(hw.gpus)}" if hw.gpus else
                 ("nvidia-smi found, no GPU listed" if hw.nvidia_smi else "no nvidia-smi"))
    power = "on AC" if hw.power.on_ac else f"on battery ({hw.power.battery_percent}%)"
    parts.append(power if hw.power.has_battery else "no battery")
    if hw.temperature_c is not None:
        parts.append(f"{hw.temperature_c:.0f} C")
    return Check("hardware", "ok", ", ".join(parts))


def _profile(hw: Hardware, configured: str | None) -> tuple[Profile | None, list[Check]]:
    try:
        profiles = load_profiles()
    except ProfileError as e:
        return None, [Check("profile", "fail", str(e), "fix or remove the profile file named above")]
    picked, why = match_profile(hw, profiles)
    checks = []
    if picked is None:
        checks.append(Check("profile", "fail" if configured is None else "warn",
                            "no profile matches this device: " + "; ".join(why),
                            "pass --profile ID to enroll (one of " + ", ".join(sorted(profiles)) + ")"))
    else:
        checks.append(Check("profile", "ok", "\n         ".join(why)))
    if configured is not None:
        if configured not in profiles:
            return None, checks + [Check("profile.configured", "fail", f"configured profile {configured!r} does "
                                         "not exist", "edge-agent config set profile ID")]
        if picked is not None and configured != picked.id:
            checks.append(Check("profile.configured", "warn", f"configured {configured!r}, detection picks "
                                f"{picked.id!r}", f"edge-agent config set profile {picked.id} (if the pick is right)"))
        return profiles[configured], checks
    return picked, checks


def _runtimes(profile: Profile | None) -> list[Check]:
    out = []
    backend = profile.runtime.backend if profile else "llama"
    try:
        llama = importlib.import_module("llama_cpp")
        out.append(Check("runtime.llama_cpp", "ok", f"llama-cpp-python {llama.__version__}"))
    except ImportError as e:
        out.append(Check("runtime.llama_cpp", "fail" if backend == "llama" else "warn", f"cannot import: {e}",
                         "pip install 'arte-edge[agent]' (ARM boards: build llama-cpp-python on the device)"))
    try:
        torch = importlib.import_module("torch")
        cuda = torch.cuda.is_available()
        need_cuda = profile is not None and profile.runtime.device == "cuda" and backend == "torch"
        status = "fail" if need_cuda and not cuda else "ok"
        out.append(Check("runtime.torch", status, f"torch {torch.__version__}, CUDA "
                         f"{'available' if cuda else 'not available'}",
                         "install a CUDA build of torch (Jetson: NVIDIA's JetPack wheel)" if status == "fail" else ""))
    except ImportError as e:
        out.append(Check("runtime.torch", "fail" if backend == "torch" else "warn",
                         f"cannot import ({e}): fine-tuning needs torch",
                         "pip install torch==2.13.0 && pip install 'arte-edge[training]'"))
    try:
        importlib.import_module("arte.finetune_job")
        out.append(Check("runtime.finetune", "ok", "arte.finetune_job available"))
    except ImportError as e:
        out.append(Check("runtime.finetune", "warn", f"fine-tuning unavailable ({e}); scoring and reporting work",
                         "upgrade arte-edge to a version with arte.finetune_job and install the training extra"))
    return out


def _model(model: str) -> Check:
    try:
        ref = resolve_model(model, model_dir())
    except ModelError as e:
        return Check("model", "fail", str(e), "arte models fetch (or `edge-agent config set model PATH`)")
    sha = f", sha256 {ref.sha256[:12]}… verified" if ref.sha256 else " (not the default: no known sha256)"
    return Check("model", "ok", f"{ref.name} at {ref.path}{sha}")


def _disk(path: Path, what: str) -> Check:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / GIB:.1f} GiB free at {probe} ({what})"
    if free < MIN_FREE_BYTES:
        return Check(f"disk.{what}", "fail", detail, f"free at least {MIN_FREE_BYTES // 1024 ** 2} MiB there")
    if free < WARN_FREE_BYTES:
        return Check(f"disk.{what}", "warn", detail, "datasets and adapters need room: free some space")
    return Check(f"disk.{what}", "ok", detail)


def _memory(hw: Hardware, profile: Profile | None) -> Check:
    if hw.memory_available is None or profile is None:
        return Check("memory", "warn", "available memory unknown (no /proc/meminfo) or no profile")
    avail = hw.memory_available / 1024 ** 2
    need = profile.budget.memory_mib
    detail = f"{avail:.0f} MiB available, profile {profile.id} budgets {need} MiB"
    if avail < need:
        return Check("memory", "warn", detail, "close other programs, or use a smaller profile/model")
    return Check("memory", "ok", detail)


def _state(state_dir: Path) -> tuple[Any, list[Check]]:
    try:
        st = State(state_dir)
    except AgentError as e:
        return None, [Check("state", "fail", str(e), "fix the state dir, or point EDGE_AGENT_STATE_DIR elsewhere")]
    checks = [Check("state", "warn" if st.read_only else "ok",
                    f"{st.path} ({'read-only' if st.read_only else 'writable'}), outbox {st.outbox_counts() or {}}",
                    "make the state dir writable by the agent's user" if st.read_only else "")]
    if st.key_path.exists():
        mode = stat.S_IMODE(st.key_path.stat().st_mode)
        if mode & 0o077:
            checks.append(Check("device_key", "fail", f"{st.key_path} has mode {oct(mode)}: others can read it",
                                f"chmod 600 {st.key_path}"))
        else:
            checks.append(Check("device_key", "ok", f"{st.key_path} (mode {oct(mode)})"))
    return st, checks


def _llama_build(profile: Profile | None, model: str, llama_check: Callable[..., Any]) -> list[Check]:
    """Run the llama.cpp self-check with the profile's runtime and compare the build with the profile."""

    name = "llama_cpp.build"
    if importlib.util.find_spec("llama_cpp") is None:
        return []   # runtime.llama_cpp already says so
    uses_llama = profile is None or profile.runtime.backend == "llama"
    try:
        ref = resolve_model(model, model_dir())
    except ModelError as e:
        return [Check(name, "warn", f"batch check not run: {e}", "arte models fetch")]
    if ref.kind != "gguf":
        return [Check(name, "warn", f"batch check not run: {ref.path} is not a GGUF model")]
    rt = profile.runtime if profile is not None and uses_llama else None
    r = llama_check(ref.path, n_threads=rt.threads if rt else 1, n_gpu_layers=rt.n_gpu_layers if rt else 0,
                    rebuild_args=(profile.build.llama_cmake_args or None) if profile else None)
    mismatches: list[str] = []
    if profile is not None and uses_llama:
        if profile.runtime.device == "cuda" and not r.build.get("gpu_offload", False):
            mismatches.append(f"profile {profile.id} offloads to the GPU (runtime.device = cuda), but this build "
                              "is CPU-only: the student runs on the CPU cores")
        recorded = (r.record or {}).get("cmake_args")
        wanted = profile.build.llama_cmake_args
        if wanted and recorded is not None and recorded.split() != wanted.split():
            mismatches.append(f"built with {recorded!r}; profile {profile.id} builds with {wanted!r}")
    if r.not_reported:
        mismatches.append(f"built for features this CPU does not report ({' '.join(r.not_reported)}): the batch "
                          "ran, but other kernels may trap")
    data = {"build": r.build, "machine": r.machine, "record": r.record, "profile": profile.id if profile else None,
            "matches_profile": (not mismatches) if r.ok and profile is not None and uses_llama else None,
            "mismatches": mismatches,
            "batch_check": {k: getattr(r, k) for k in ("ok", "stage", "exit", "signal", "timed_out", "seconds",
                                                          "result", "message")}}
    if not r.ok:
        return [Check(name, "fail" if uses_llama else "warn", r.message, r.rebuild, data)]
    fix = ""
    if mismatches and profile is not None:
        args = profile.build.llama_cmake_args
        fix = f'make install LLAMA_CMAKE_ARGS="{args}"' if args else "make install (the portable baseline)"
    checks = [Check(name, "warn" if mismatches else "ok", "\n         ".join([r.message, *mismatches]), fix, data)]
    quant = r.result.get("quantization")
    if rt is not None and profile is not None and quant:
        same = quant == rt.quantization
        checks.append(Check("model.quantization", "ok" if same else "warn",
                            f"the model is {quant}; profile {profile.id} expects {rt.quantization}"
                            + ("" if same else " (it runs, at another speed and accuracy)"),
                            "" if same else f"use a {rt.quantization} GGUF: edge-agent config set model PATH"))
    return checks


def run_checks(*, hw: Hardware, state_dir: Path, probe_server: Callable[[Any], Check] | None = None,
               llama_check: Callable[..., Any] | None = None) -> list[Check]:
    """Every check, in the order a user should fix them. ``llama_check``: the llama.cpp self-check
    (:func:`arte.backends.llama_check.self_check` with the device's cpuinfo and build record bound)."""
    checks = [_hardware(hw)]
    st, state_checks = _state(state_dir)
    settings = st.settings() if st is not None else {}
    profile, prof_checks = _profile(hw, settings.get("profile"))
    model = settings.get("model", "default")
    checks += prof_checks + _runtimes(profile) + [_model(model)]
    if llama_check is not None:
        checks += _llama_build(profile, model, llama_check)
    checks += [_disk(state_dir, "state"), _memory(hw, profile)] + state_checks
    if "device_id" in settings:
        checks.append(Check("enrollment", "ok", f"device {settings['device_id']} in cohort "
                            f"{settings.get('cohort_id')} at {settings.get('server_url')}"))
    else:
        checks.append(Check("enrollment", "warn", "not enrolled", "edge-agent enroll --server URL --token T"))
    checks.append(_data(settings, profile))
    if profile is not None:
        blockers = work_blockers(profile, hw)
        checks.append(Check("conditions", "warn" if blockers else "ok",
                            "; ".join(blockers) or f"profile {profile.id} allows work now",
                            "work waits until these clear (or run with --ignore-conditions)" if blockers else ""))
    if st is not None and probe_server is not None and "device_id" in settings:
        checks.append(probe_server(st))
    if st is not None:
        st.close()
    return checks


def _data(settings: dict[str, str], profile: Profile | None) -> Check:
    path = settings.get("data_path")
    if not path:
        return Check("data", "warn", "no private data configured: the agent cannot score or evaluate",
                     "edge-agent config set data_path PATH")
    try:
        task = load_task(path)
    except ArteError as e:
        return Check("data", "fail", str(e), "fix the file or point data_path at another one")
    n = len(task.examples)
    share = float(settings.get("validation_share", "0.5"))
    return Check("data", "ok", f"{path}: task {task.name!r}, {n} examples ({task.kind}); about {int(n * share)} "
                               f"for scoring (profile uses up to {profile.scoring.max_items if profile else '?'}), "
                               f"the rest for evaluation; never sent")

