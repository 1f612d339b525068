"""`edge-agent doctor` runs the llama.cpp self-check with the profile's runtime: a crashing build fails
(never ok) naming the signal; a build that runs is compared with the profile (GPU offload, quantization)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import edge_agent.cli as cli
from edge_agent.errors import ExitCode
from tests.support.fakes import ARM_CPUINFO, fake_root
from tests.support.llama_check_fakes import child_code, fake_llama_check

ARM_DOTPROD = ARM_CPUINFO.replace("Features\t: fp asimd", "Features\t: fp asimd asimdhp asimddp")


def _env(tmp_path: Path, board: str) -> dict[str, str]:
    root = fake_root(tmp_path / "root", cpuinfo=ARM_DOTPROD, model=board)
    env = {"EDGE_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_ROOT": str(root)}
    model = tmp_path / "student.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    r = CliRunner().invoke(cli.main, ["config", "set", "model", str(model)], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return env


def _doctor(env: dict[str, str]) -> tuple[int, dict, dict]:
    r = CliRunner().invoke(cli.main, ["doctor", "--offline", "--json"], env=env, catch_exceptions=False)
    doc = json.loads(r.stdout)
    return r.exit_code, doc, {c["name"]: c for c in doc["checks"]}


def test_a_build_that_dies_of_sigill_fails_the_doctor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_llama_check", fake_llama_check(child_code(features=("NEON", "SVE"), die="SIGILL")))
    code, doc, checks = _doctor(_env(tmp_path, "Raspberry Pi 5 Model B Rev 1.0"))
    build = checks["llama_cpp.build"]
    assert build["status"] == "fail" and code == ExitCode.CHECKS and doc["ok"] is False
    assert "killed by signal SIGILL (illegal instruction" in build["detail"]
    assert "built for, but not reported by this CPU: SVE" in build["detail"]
    assert 'make install LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"' \
        in build["fix"]                                        # the Pi 5 profile's [build] flags
    llama = doc["llama_cpp"]
    assert llama["batch_check"]["ok"] is False and llama["batch_check"]["signal"] == "SIGILL"
    assert llama["build"]["cpu_features"] == ["NEON", "SVE"] and llama["build"]["gpu_offload"] is False
    assert "DOTPROD" in llama["machine"]["features"] and llama["matches_profile"] is None


def test_a_cpu_only_build_on_a_cuda_profile_is_a_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(cli, "_llama_check", fake_llama_check(child_code(gpu=False), calls))
    code, doc, checks = _doctor(_env(tmp_path, "NVIDIA Jetson Orin Nano Developer Kit"))
    assert calls[0]["n_threads"] == 6 and calls[0]["n_gpu_layers"] == -1   # the profile's runtime
    build = checks["llama_cpp.build"]
    assert build["status"] == "warn" and "this build is CPU-only" in build["detail"]
    assert "-DGGML_CUDA=on" in build["fix"]
    assert doc["llama_cpp"]["matches_profile"] is False and doc["llama_cpp"]["profile"] == "jetson-orin-nano"
    assert checks["model.quantization"]["status"] == "ok"


def test_a_cuda_build_matches_the_cuda_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_llama_check", fake_llama_check(child_code(gpu=True)))
    code, doc, checks = _doctor(_env(tmp_path, "NVIDIA Jetson Orin Nano Developer Kit"))
    assert checks["llama_cpp.build"]["status"] == "ok" and doc["llama_cpp"]["matches_profile"] is True
    assert "GPU offload" in checks["llama_cpp.build"]["detail"]


def test_the_model_quantization_is_compared_with_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(cli, "_llama_check", fake_llama_check(child_code(quantization="Q4_1"), calls))
    _, doc, checks = _doctor(_env(tmp_path, "Raspberry Pi 5 Model B Rev 1.0"))
    assert calls[0]["n_threads"] == 4 and calls[0]["n_gpu_layers"] == 0
    q = checks["model.quantization"]
    assert q["status"] == "warn" and "the model is Q4_1; profile raspberry-pi-5 expects Q4_0" in q["detail"]
    assert checks["llama_cpp.build"]["status"] == "ok" and doc["llama_cpp"]["matches_profile"] is True


def test_a_torch_profile_only_warns_about_a_crashing_llama_build(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_llama_check", fake_llama_check(child_code(die="SIGSEGV")))
    _, doc, checks = _doctor(_env(tmp_path, "Jetson AGX Orin Developer Kit"))
    build = checks["llama_cpp.build"]
    assert build["status"] == "warn" and "SIGSEGV" in build["detail"]
    assert "model.quantization" not in checks
