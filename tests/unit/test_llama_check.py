"""The llama.cpp self-check explains a child's death without building anything: the children here die on
purpose (SIGILL, a non-zero exit, a hang), and the Makefile's baselines are the module's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arte.backends import llama_check as lc
from tests.support.fakes import ARM_CPUINFO

ROOT = Path(__file__).resolve().parents[2]

X86_CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon\n"
               "flags\t\t: fpu sse pni ssse3 fma avx f16c avx2 bmi2 avx512f amx_tile\n")
# What a native build on an AMX machine reports, then a death in the batch (the crash).
BUILD_THEN_DIE = (
    "import json, os, signal\n"
    "say = lambda **d: print('ARTE-SELF-CHECK ' + json.dumps(d), flush=True)\n"
    "say(stage='started')\n"
    "say(stage='build', version='0.3.36', system_info='CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 |',"
    " cpu_features=['AVX2', 'AVX512', 'AMX_INT8'], gpu_offload=False)\n"
    "say(stage='loaded', quantization='Q4_1', n_gpu_layers=0)\n"
    "os.kill(os.getpid(), signal.SIGILL)\n")


def _check(tmp_path: Path, code: str, cpuinfo: str = X86_CPUINFO, **kw) -> lc.SelfCheck:
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo)
    return lc.self_check(tmp_path / "model.gguf", cpuinfo_path=info, command=[sys.executable, "-c", code], **kw)


def test_a_child_that_dies_of_sigill_is_named_with_the_signal_and_the_rebuild(tmp_path: Path) -> None:
    r = _check(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert not r.ok and r.signal == "SIGILL" and r.returncode == -4
    assert "killed by signal SIGILL (illegal instruction" in r.message
    assert "while importing llama_cpp" in r.message
    assert "Fatal Python error: Illegal instruction" in r.message     # faulthandler, via child_env
    assert "build features: unknown" in r.message
    assert "make install LLAMA_CMAKE_ARGS=" in r.message and "pip install --force-reinstall" in r.message
    assert "this CPU (" in r.message and "AVX512" in r.message


def test_features_built_for_but_not_reported_are_listed(tmp_path: Path) -> None:
    record = tmp_path / "build.json"
    record.write_text(json.dumps({"cmake_args": "-DGGML_NATIVE=ON", "built_on": "Intel Xeon Max", "date": "x"}))
    r = _check(tmp_path, BUILD_THEN_DIE, build_record=record)
    assert r.signal == "SIGILL" and r.stage == "loaded" and r.result["quantization"] == "Q4_1"
    assert "while evaluating the batch" in r.message
    assert "llama.cpp is built for: AVX2 AVX512 AMX_INT8" in r.message
    assert r.not_reported == ["AMX_INT8"]                 # the CPU reports amx_tile, not amx_int8
    assert "built for, but not reported by this CPU: AMX_INT8" in r.message
    assert "built with: -DGGML_NATIVE=ON on Intel Xeon Max" in r.message
    assert lc.BASELINE_CMAKE_ARGS["x86_64"] in r.rebuild  # this CPU has the AVX2 baseline


def test_a_vm_that_reports_what_it_cannot_execute_is_explained(tmp_path: Path) -> None:
    cpuinfo = X86_CPUINFO.replace("amx_tile", "amx_tile amx_int8")
    r = _check(tmp_path, BUILD_THEN_DIE, cpuinfo=cpuinfo)
    assert r.not_reported == [] and "reports every feature the build uses" in r.message


def test_a_child_that_exits_non_zero(tmp_path: Path) -> None:
    r = _check(tmp_path, "import sys; sys.stderr.write('cannot open model.gguf\\n'); sys.exit(3)")
    assert not r.ok and r.signal is None and r.returncode == 3
    assert "exited with status 3" in r.message and "cannot open model.gguf" in r.message


def test_a_child_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    code = ("print('ARTE-SELF-CHECK {\"stage\": \"build\", \"cpu_features\": []}', flush=True)\n"
            "import time; time.sleep(60)")
    r = _check(tmp_path, code, timeout_s=1.5)
    assert not r.ok and r.timed_out and r.returncode is None
    assert "did not finish within 1.5 s and was killed while loading the model" in r.message


def test_wrong_results_fail_even_when_the_child_exits_cleanly(tmp_path: Path) -> None:
    code = ("print('ARTE-SELF-CHECK {\"stage\": \"done\", \"problem\": \"log-probabilities are not finite\"}');"
            "import sys; sys.exit(0)")
    r = _check(tmp_path, code)
    assert not r.ok and "results are wrong: log-probabilities are not finite" in r.message


def test_system_info_and_cpu_flags_are_parsed() -> None:
    info = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | OPENMP = 1 | REPACK = 1 | CUDA : ARCHS = 870 | USE_GRAPHS = 1 |"
    parsed = lc.parse_system_info(info)
    assert parsed["CUDA"] == {"ARCHS": "870", "USE_GRAPHS": "1"} and parsed["CPU"]["AVX512"] == "0"
    assert lc.build_features(info) == ["SSE3", "AVX2"]
    arm = lc.cpu_flags(ARM_CPUINFO)
    assert "asimd" in arm
    assert {"NEON", "ARM_FMA"} <= set(lc.machine_features(arm))
    assert lc.cpu_flags(None) == ()


def test_the_baseline_is_lowered_for_cpus_below_it() -> None:
    assert lc.baseline_cmake_args("x86_64", ("avx2", "fma", "f16c", "bmi2")) == lc.BASELINE_CMAKE_ARGS["x86_64"]
    assert "-DGGML_AVX2=OFF" in lc.baseline_cmake_args("x86_64", ("avx",))
    assert lc.baseline_cmake_args("aarch64", ("asimd",)).endswith("armv8-a")


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
@pytest.mark.parametrize("arch, flags", [
    ("x86_64", "fpu pni avx fma f16c avx2 bmi2 avx512f amx_tile amx_int8"),   # the Xeon
    ("x86_64", "fpu pni ssse3 sse4_2"),                                         # a CPU without AVX2
    ("aarch64", "fp asimd evtstrm asimdhp asimddp"),                            # Cortex-A76/A78
    ("aarch64", "fp asimd evtstrm crc32"),                                      # Cortex-A72 (Pi 4)
])
def test_the_makefile_builds_the_same_baseline(arch: str, flags: str) -> None:
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "llama-flags", f"ARCH={arch}", f"CPU_FLAGS={flags}"],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["cmake args"].strip() == lc.baseline_cmake_args(arch, flags.split())
    assert fields["native"].strip() == "no"
    assert f"llama-cpp-python-{lc.LLAMA_CPP_VERSION}-{arch}-" in fields["wheels"]


def test_native_wheels_are_keyed_by_the_cpu_and_the_versions_agree() -> None:
    def wheels(**kw: str) -> str:
        args = [f"{k}={v}" for k, v in kw.items()]
        out = subprocess.run(["make", "-s", "-C", str(ROOT), "llama-flags", *args], capture_output=True, text=True,
                             check=True, env={"PATH": "/usr/bin:/bin"}).stdout
        return dict(line.split(":", 1) for line in out.splitlines())["wheels"].strip()

    native = "-DGGML_NATIVE=ON"
    one_cpu = wheels(LLAMA_CMAKE_ARGS=native, CPU_FLAGS="avx2")
    assert one_cpu != wheels(LLAMA_CMAKE_ARGS=native, CPU_FLAGS="avx2 amx_int8")
    assert wheels(CPU_FLAGS="avx2 fma f16c bmi2") == wheels(CPU_FLAGS="avx2 fma f16c bmi2 amx_int8")   # portable
    assert f"llama-cpp-python=={lc.LLAMA_CPP_VERSION}" in (ROOT / "constraints.txt").read_text()


# -- `arte models check` --------------------------------------------------------------------------------------


def test_models_check_exits_5_naming_the_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from arte_cli.cli import main as arte

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    real = lc.run_child
    monkeypatch.setattr(lc, "run_child", lambda cmd, **kw: real([sys.executable, "-c", BUILD_THEN_DIE], **kw))
    r = CliRunner().invoke(arte, ["models", "check", "--model", str(model), "--json"])
    assert r.exit_code == 5, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["signal"] == "SIGILL" and doc["build"]["cpu_features"][-1] == "AMX_INT8"
    assert "error: llama.cpp self-check failed on m.gguf: the child process was killed by signal SIGILL" in r.stderr
    r = CliRunner().invoke(arte, ["models", "check", "--model", str(model)])
    assert r.exit_code == 5 and r.stdout == "" and "rebuild: make install" in r.stderr


def test_models_check_refuses_a_missing_model(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from arte_cli.cli import main as arte

    r = CliRunner().invoke(arte, ["models", "check", "--model", str(tmp_path / "none.gguf")])
    assert r.exit_code == 4 and "not found" in r.stderr
