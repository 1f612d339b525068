"""Does the installed llama.cpp build run on this CPU? A real batch, evaluated in a child process.

Contract: :func:`self_check` starts ``python -X faulthandler -m arte.backends.llama_check MODEL`` and waits
at most ``timeout_s``. The child opens :class:`arte.backends.llama.LlamaCppStudent` and does what the
project does with it: one ``loglik_batch`` of several requests (a shared prefix of at least 64 tokens, then
a token trie of 8 sequences) and one parallel ``generate`` of 4 prompts. It reports each stage on stdout
(``ARTE-SELF-CHECK {json}`` lines: the build, the loaded model, the result), so the parent knows how far it
got even when it dies. A build compiled for instructions this CPU cannot execute (AVX-512 or AMX built
natively on another machine, or reported by a VM that traps them) dies of SIGILL on the first real batch,
while importing the module and a one-token completion still work: only a child can survive finding out.

The :class:`SelfCheck` says, on failure: how the child ended (the signal by name, via :mod:`arte.procs`),
at which stage, the CPU features llama.cpp was built for (``llama_print_system_info()``) and those this CPU
reports (``/proc/cpuinfo``), the ones built for but not reported, and the command that rebuilds for the
portable baseline (:data:`BASELINE_CMAKE_ARGS`, the Makefile's default; a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from arte.backends.llama import LlamaCppStudent
from arte.procs import ChildResult, describe_exit, passive_openmp, run_child, signal_name

__all__ = ["BASELINE_CMAKE_ARGS", "SelfCheck", "baseline_cmake_args", "build_features", "cpu_flags",
           "installed_build_record", "machine_features", "parse_system_info", "rebuild_command", "self_check"]

LLAMA_CPP_VERSION = "0.3.36"
TIMEOUT_S = 180.0
BUILD_RECORD = "llama-cpp-build.json"   # what `make install` writes into the venv: flags, build CPU, time
_MARK = "ARTE-SELF-CHECK "

# The portable baselines (keep equal to the Makefile's LLAMA_BASELINE*; tests/unit/test_llama_check.py).
# x86-64: AVX2+FMA+F16C+BMI2, never AVX-512 or AMX; aarch64: ARMv8.2-A + dotprod + fp16 (Cortex-A76/A78:
# Raspberry Pi 5, Jetson Orin). A CPU below the baseline gets the lower one (SSE4.2; ARMv8-A).
_X86_OFF = "-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF " \
           "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
BASELINE_CMAKE_ARGS = {
    "x86_64": "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
              + _X86_OFF,
    "aarch64": "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16",
}
LOWER_CMAKE_ARGS = {
    "x86_64": "-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF "
              + _X86_OFF,
    "aarch64": "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a",
}
# /proc/cpuinfo flags a CPU needs for the baseline (any one of a tuple's names will do).
BASELINE_FLAGS = {"x86_64": ("avx2", "fma", "f16c", "bmi2"), "aarch64": ("asimddp", "asimdhp")}

# llama.cpp's CPU feature names (llama_print_system_info) -> the /proc/cpuinfo flags that provide them.
# Only instruction-set features: LLAMAFILE, OPENMP, REPACK ... are software and always run.
FEATURE_FLAGS = {
    "SSE3": ("pni", "sse3"), "SSSE3": ("ssse3",), "AVX": ("avx",), "AVX_VNNI": ("avx_vnni",), "AVX2": ("avx2",),
    "F16C": ("f16c",), "FMA": ("fma",), "BMI2": ("bmi2",), "AVX512": ("avx512f",),
    "AVX512_VBMI": ("avx512vbmi",), "AVX512_VNNI": ("avx512_vnni",), "AVX512_BF16": ("avx512_bf16",),
    "AMX_INT8": ("amx_int8",),
    "NEON": ("asimd", "neon"), "ARM_FMA": ("asimd", "vfpv4"), "FP16_VA": ("asimdhp",), "DOTPROD": ("asimddp",),
    "MATMUL_INT8": ("i8mm",), "SVE": ("sve",), "SME": ("sme",), "SME2": ("sme2",),
}
# GGUF general.file_type -> the quantization names firmware profiles use.
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 14: "Q4_K_S",
              15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


def installed_build_record() -> Path:
    """Where ``make install`` records how the installed wheel was built (may not exist: pip installs)."""
    return Path(sys.prefix) / BUILD_RECORD


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """``"CPU : AVX = 1 | AVX2 = 1 | CUDA : ARCHS = 870 | "`` -> ``{"CPU": {"AVX": "1", ...}, "CUDA": {...}}``."""
    out: dict[str, dict[str, str]] = {}
    section = ""
    for part in text.split("|"):
        head, colon, rest = part.partition(" : ")
        if colon:
            section = head.strip()
            out.setdefault(section, {})
            part = rest
        key, eq, value = part.partition("=")
        if eq and key.strip():
            out.setdefault(section, {})[key.strip()] = value.strip()
    return out


def build_features(system_info: str) -> list[str]:
    """The CPU instruction-set features a build uses, in llama.cpp's names (``AVX2``, ``DOTPROD``...)."""
    info = parse_system_info(system_info)
    return [k for sec in info.values() for k, v in sec.items() if k in FEATURE_FLAGS and v == "1"]


def cpu_flags(cpuinfo: str | None) -> tuple[str, ...]:
    """The CPU's flags from /proc/cpuinfo text: ``flags`` on x86, ``Features`` on aarch64 (first CPU)."""
    for line in (cpuinfo or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return tuple(value.split())
    return ()


def machine_features(flags: Sequence[str]) -> list[str]:
    """The llama.cpp features this CPU reports (by its flags)."""
    have = set(flags)
    return [f for f, names in FEATURE_FLAGS.items() if have.intersection(names)]


def baseline_cmake_args(arch: str, flags: Sequence[str]) -> str:
    """The portable build for ``arch``, lowered when this CPU lacks the baseline (the Makefile's rule)."""
    if arch not in BASELINE_CMAKE_ARGS:
        return "-DGGML_NATIVE=OFF"
    return BASELINE_CMAKE_ARGS[arch] if set(BASELINE_FLAGS[arch]) <= set(flags) else LOWER_CMAKE_ARGS[arch]


def rebuild_command(cmake_args: str) -> str:
    """How to rebuild llama-cpp-python with ``cmake_args``: in the repository, and for an agent-only install."""
    return (f'make install LLAMA_CMAKE_ARGS="{cmake_args}"   (in the repository; the wheel is kept per flags)\n'
            f'  or, agent-only: CMAKE_ARGS="{cmake_args}" pip install --force-reinstall --no-cache-dir --no-deps '
            f"llama-cpp-python=={LLAMA_CPP_VERSION}")


@dataclass(frozen=True)
class SelfCheck:
    """The outcome. ``stage`` is the last one the child reported: ``started``, ``build`` (llama_cpp imported),
    ``loaded`` (model opened) or ``done``; ``exit`` says how the child ended."""

    ok: bool
    message: str
    stage: str
    exit: str
    returncode: int | None
    signal: str | None
    timed_out: bool
    seconds: float
    build: dict[str, Any] = field(default_factory=dict)       # version, system_info, cpu_features, gpu_offload
    machine: dict[str, Any] = field(default_factory=dict)     # arch, cpu_model, features
    not_reported: list[str] = field(default_factory=list)     # built for, but this CPU does not report
    result: dict[str, Any] = field(default_factory=dict)      # tokens, sequences, generated, quantization
    rebuild: str = ""
    record: dict[str, Any] | None = None                      # the Makefile's build.json, when installed by it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_model(cpuinfo: str | None) -> str | None:
    for line in (cpuinfo or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return None


def _stages(stdout: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        if line.startswith(_MARK):
            try:
                doc = json.loads(line[len(_MARK):])
            except ValueError:
                continue
            out[str(doc.get("stage"))] = doc
    return out


_DOING = {"started": "importing llama_cpp", "build": "loading the model",
          "loaded": "evaluating the batch (loglik_batch, then a parallel generate)",
          "done": "exiting after the batch"}


def self_check(model_path: str | Path, *, n_threads: int = 1, n_gpu_layers: int = 0, timeout_s: float = TIMEOUT_S,
               cpuinfo_path: str | Path = "/proc/cpuinfo", build_record: str | Path | None = None,
               rebuild_args: str | None = None, command: Sequence[str] | None = None) -> SelfCheck:
    """Run the check in a child process and explain the outcome (see the module docstring).

    ``build_record``: the JSON file the Makefile writes next to the venv (what the wheel was built with,
    and on which CPU). ``rebuild_args``: the CMake flags to recommend (default: the baseline for this CPU).
    ``command`` replaces the child's command line (tests use children that die on purpose).
    """
    try:
        cpuinfo: str | None = Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        cpuinfo = None
    arch = platform.machine()
    flags = cpu_flags(cpuinfo)
    machine = {"arch": arch, "cpu_model": _cpu_model(cpuinfo), "features": machine_features(flags)}
    record = None
    if build_record is not None:
        try:
            record = json.loads(Path(build_record).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
    cmd = list(command) if command is not None else [
        sys.executable, "-X", "faulthandler", "-m", "arte.backends.llama_check", str(model_path),
        "--threads", str(n_threads), "--gpu-layers", str(n_gpu_layers)]
    env = dict(os.environ)
    passive_openmp(env)
    child = run_child(cmd, timeout_s=timeout_s, env=env)
    return _explain(child, timeout_s, machine, flags, record, rebuild_args or baseline_cmake_args(arch, flags),
                    Path(model_path).name)


def _explain(child: ChildResult, timeout_s: float, machine: dict[str, Any], flags: Sequence[str],
             record: dict[str, Any] | None, rebuild_args: str, model: str) -> SelfCheck:
    stages = _stages(child.stdout)
    stage = next((s for s in ("done", "loaded", "build") if s in stages), "started")
    build = {k: v for k, v in stages.get("build", {}).items() if k != "stage"}
    built_for = list(build.get("cpu_features", []))
    have = set(machine["features"])
    not_reported = [f for f in built_for if f not in have] if flags else []
    result = {k: v for k, v in stages.get("done", {}).items() if k != "stage"}
    result.update({k: v for k, v in stages.get("loaded", {}).items() if k != "stage"})
    sig = signal_name(-child.returncode) if child.returncode is not None and child.returncode < 0 else None
    exit_text = (f"did not finish within {timeout_s:g} s and was killed" if child.timed_out
                 else describe_exit(child.returncode))
    ok = child.ok and stage == "done" and not result.get("problem")
    gpu = "GPU offload" if build.get("gpu_offload") else "no GPU offload"
    features = " ".join(built_for) or "none"
    if ok:
        message = (f"llama.cpp evaluated a batch of {result.get('batch_tokens')} tokens in "
                   f"{result.get('sequences')} sequences and generated {result.get('generated')} tokens in "
                   f"{result.get('parallel')} parallel sequences in {child.seconds:.1f} s "
                   f"(llama-cpp-python {build.get('version')}, built for {features}; {gpu})")
        return SelfCheck(True, message, stage, exit_text, child.returncode, None, False, child.seconds, build,
                         machine, not_reported, result, "", record)
    if result.get("problem"):
        head = f"the batch ran, but its results are wrong: {result['problem']}"
    else:
        head = f"the child process {exit_text} while {_DOING[stage]}"
    lines = [f"llama.cpp self-check failed on {model}: {head}."]
    if build:
        lines.append(f"llama.cpp is built for: {features} (llama-cpp-python {build.get('version')}; {gpu})")
    else:
        lines.append("llama.cpp's build features: unknown (the child ended before reporting them)")
    if record:
        lines.append(f"the installed wheel was built with: {record.get('cmake_args') or '(default flags)'} on "
                     f"{record.get('built_on') or 'an unknown CPU'} ({record.get('date', '')})")
    if flags:
        lines.append(f"this CPU ({machine['arch']}, {machine['cpu_model'] or 'unknown model'}) reports: "
                     f"{' '.join(machine['features']) or 'none of them'}")
        if not_reported:
            lines.append(f"built for, but not reported by this CPU: {' '.join(not_reported)}")
        elif built_for and sig == "SIGILL":
            lines.append("this CPU reports every feature the build uses, but a CPU or VM may report features it "
                         "cannot execute (AMX on some cloud VMs): rebuild for the portable baseline")
    else:
        lines.append(f"this CPU's features: unknown (no /proc/cpuinfo flags; {machine['arch']})")
    lines.append("rebuild: " + rebuild_command(rebuild_args))
    tail = "\n".join(child.stderr.rstrip().splitlines()[-15:])
    if tail:
        lines.append("last lines of the child's output:\n" + tail)
    return SelfCheck(False, "\n".join(lines), stage, exit_text, child.returncode, sig, child.timed_out,
                     child.seconds, build, machine, not_reported, result, rebuild_command(rebuild_args), record)


# -- the child ------------------------------------------------------------------------------------------------

_PREFIX = ("You are checking that this build of llama.cpp runs on this computer. Answer each question below "
           "with one word only, and do not explain the answer. The questions are about simple facts: the "
           "geography of Europe, small sums, the colours of things seen every day, and the oceans of the world.\n")
_QUESTIONS = (("What is the capital of France?", ("Paris", "Berlin")),
              ("What is two plus two?", ("four", "five")),
              ("What colour is the sky on a clear day?", ("blue", "green")),
              ("Which ocean lies west of Portugal?", ("Atlantic", "Pacific")))


def _say(stage: str, **data: Any) -> None:
    print(_MARK + json.dumps({"stage": stage, **data}), flush=True)


def _child(model: str, n_threads: int, n_gpu_layers: int) -> int:
    _say("started")
    import llama_cpp  # the first native code; a build that traps at load time dies here

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    _say("build", version=llama_cpp.__version__, system_info=info.strip(), cpu_features=build_features(info),
         gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()))

    with LlamaCppStudent(model, n_ctx=2048, n_threads=n_threads, n_parallel=4, n_gpu_layers=n_gpu_layers) as s:
        ftype = s.metadata("general.file_type")
        _say("loaded", quantization=FILE_TYPES.get(int(ftype), f"file type {ftype}") if ftype else None,
             n_gpu_layers=n_gpu_layers)
        prefix = s.tokenize(_PREFIX)
        while len(prefix) < 64:   # a tokenizer with long tokens: the first batch still needs 64+ tokens
            prefix += prefix
        requests = [(prefix + s.tokenize(f"Question: {q}\nAnswer:"), [s.tokenize(" " + a) for a in answers])
                    for q, answers in _QUESTIONS]
        before = s.tokens_evaluated
        scores = s.loglik_batch(requests)
        batch_tokens = s.tokens_evaluated - before
        gens = s.generate([p for p, _ in requests], max_new_tokens=8)
        lps = [c.logprob for conts in scores for c in conts]
        problem = None
        if not all(math.isfinite(x) and x <= 1e-6 for x in lps):
            problem = f"log-probabilities are not finite negative numbers: {lps}"
        elif not all(g.n_tokens >= 1 or g.stop == "eos" for g in gens):
            problem = "generate produced nothing"
        _say("done", batch_tokens=batch_tokens, prefix_tokens=len(prefix), sequences=sum(len(a) for _, a in requests),
             generated=sum(g.n_tokens for g in gens), parallel=len(gens), problem=problem,
             logprobs=[round(x, 3) for x in lps])
    return 3 if problem else 0


def main(argv: Sequence[str] | None = None) -> int:
    """The child's entry point: ``python -m arte.backends.llama_check MODEL [--threads N] [--gpu-layers N]``."""

    ap = argparse.ArgumentParser(prog="python -m arte.backends.llama_check")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu-layers", type=int, default=0)
    a = ap.parse_args(argv)
    return _child(a.model, a.threads, a.gpu_layers)


if __name__ == "__main__":
    sys.exit(main())
