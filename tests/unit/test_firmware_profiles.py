"""Every firmware profile file loads and validates; bad files are refused naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_profiles import PROFILE_DIR, Profile, ProfileError, load_profile, load_profiles

FILES = sorted(PROFILE_DIR.glob("*.toml"))
REQUIRED = {"jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5", "laptop-cpu", "x86-cuda"}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_profile_loads(path: Path) -> None:
    p = load_profile(path)
    assert isinstance(p, Profile) and p.id == path.stem
    assert p.runtime.threads >= 1 and p.budget.memory_mib >= 256
    assert p.match.n_conditions >= 1, "a profile without match rules would match every device"


def test_the_device_classes_are_all_there() -> None:
    assert REQUIRED <= set(load_profiles())


GOOD = (PROFILE_DIR / "laptop-cpu.toml").read_text()


def _write(tmp_path: Path, text: str, name: str = "laptop-cpu") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("old,new,field", [
    ('backend = "llama"', 'backend = "tflite"', "runtime.backend"),
    ('quantization = "Q4_1"', 'quantization = "int8"', "runtime.quantization"),
    ("threads = 2", "threads = 0", "runtime.threads"),
    ("lora_rank = 8", "lora_rank = -1", "training.lora_rank"),
    ('mode = "cot-choice"', 'mode = "vibes"', "scoring.mode"),
    ("max_temperature_c = 85", "max_temperature_c = 400", "when.max_temperature_c"),
    ("only_on_ac_power = true", 'only_on_ac_power = "yes"', "when.only_on_ac_power"),
    ('arch = ["x86_64", "aarch64"]', 'arch = ["mips"]', "match.arch"),
    ("score_seconds = 600", "score_seconds = 600\nscore_secs = 5", "budget.score_secs"),
    ("memory_mib = 2048\n", "", "budget.memory_mib"),
    ('id = "laptop-cpu"', 'id = "laptop"', "id"),
])
def test_bad_values_name_file_and_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert exc.value.field == field
    assert str(path) in str(exc.value) and field in str(exc.value)


def test_missing_section_and_bad_toml(tmp_path: Path) -> None:
    no_runtime = GOOD.split("[runtime]")[0] + "[budget]" + GOOD.split("[budget]")[1]
    with pytest.raises(ProfileError, match="'runtime': missing"):
        load_profile(_write(tmp_path, no_runtime))
    with pytest.raises(ProfileError, match="invalid TOML"):
        load_profile(_write(tmp_path, "id = ", name="x"))
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "nope.toml")


@pytest.mark.parametrize("old,new,field", [
    # llama on cuda needs a CUDA build named in [build]
    ("threads = 2", 'threads = 2\ndevice = "cuda"', "build.llama_cmake_args"),
    ("threads = 2", 'threads = 2\ndevice = "tpu"', "runtime.device"),
    # offloading layers is for llama on cuda only
    ("threads = 2", "threads = 2\ngpu_layers = 12", "runtime.gpu_layers"),
    ("threads = 2", 'threads = 2\ndevice = "cuda"\ngpu_layers = 0\n[build]\n'
                    'llama_cmake_args = "-DGGML_NATIVE=OFF -DGGML_CUDA=on"', "runtime.gpu_layers"),
    # a device class gets a portable build; only llama uses one
    ("[budget]", '[build]\nllama_cmake_args = "-DGGML_NATIVE=ON"\n\n[budget]', "build.llama_cmake_args"),
    ('backend = "llama"\nquantization = "Q4_1"', 'backend = "torch"\nquantization = "fp32"', None),
])
def test_device_and_build_rules(tmp_path: Path, old: str, new: str, field: str | None) -> None:
    text = GOOD.replace(old, new, 1)
    if field is None:   # a torch profile with llama build flags: nothing would read them
        text = text.replace("[budget]", '[build]\nllama_cmake_args = "-DGGML_NATIVE=OFF"\n\n[budget]', 1)
        field = "build.llama_cmake_args"
    with pytest.raises(ProfileError) as exc:
        load_profile(_write(tmp_path, text))
    assert exc.value.field == field


def test_llama_on_cuda_with_a_cuda_build_loads(tmp_path: Path) -> None:
    text = GOOD.replace("threads = 2", 'threads = 2\ndevice = "cuda"\ngpu_layers = 20', 1).replace(
        "[budget]", '[build]\nllama_cmake_args = "-DGGML_NATIVE=OFF -DGGML_CUDA=on"\n\n[budget]', 1)
    p = load_profile(_write(tmp_path, text))
    assert p.runtime.n_gpu_layers == 20 and p.build.cuda
    assert load_profile(PROFILE_DIR / "laptop-cpu.toml").runtime.n_gpu_layers == 0
    assert load_profile(PROFILE_DIR / "jetson-orin-nano.toml").runtime.n_gpu_layers == -1
