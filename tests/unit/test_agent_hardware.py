"""Hardware detection on fake /proc and /sys trees, profile matching, and the "may work now" rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.hardware import detect, match_profile, work_blockers
from firmware_profiles import load_profiles
from tests.support.fakes import ARM_CPUINFO, fake_root

X86_CPUINFO = "".join(f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7-1260P\n"
                      f"flags\t\t: fpu avx2\n\n" for i in range(8))


def no_gpu() -> None:
    return None


@pytest.fixture(scope="module")
def profiles():
    return load_profiles()


@pytest.mark.parametrize("model,expected", [
    ("Raspberry Pi 5 Model B Rev 1.0", "raspberry-pi-5"),
    ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
    ("Jetson AGX Orin Developer Kit", "jetson-agx-orin"),
    ("Some Other ARM Board", "laptop-cpu"),
])
def test_arm_boards_by_device_tree(tmp_path: Path, profiles, model: str, expected: str) -> None:
    hw = detect(fake_root(tmp_path, cpuinfo=ARM_CPUINFO, model=model), nvidia_smi=no_gpu)
    assert hw.arch == "aarch64" and hw.cpu_cores == 4 and hw.device_tree_model == model
    picked, why = match_profile(hw, profiles)
    assert picked is not None and picked.id == expected
    assert why[0].startswith(f"picked {expected}")


def test_x86_with_nvidia_smi_picks_cuda(tmp_path: Path, profiles) -> None:
    hw = detect(fake_root(tmp_path, cpuinfo=X86_CPUINFO),
                nvidia_smi=lambda: "NVIDIA GeForce RTX 4090, 24564 MiB\n")
    assert hw.arch == "x86_64" and hw.cpu_cores == 8 and hw.cpu_model.startswith("Intel")
    assert hw.gpus == ("NVIDIA GeForce RTX 4090, 24564 MiB",)
    assert match_profile(hw, profiles)[0].id == "x86-cuda"


def test_x86_without_gpu_is_a_laptop(tmp_path: Path, profiles) -> None:
    hw = detect(fake_root(tmp_path, cpuinfo=X86_CPUINFO), nvidia_smi=no_gpu)
    picked, why = match_profile(hw, profiles)
    assert picked.id == "laptop-cpu"
    assert any(line.startswith("x86-cuda: no match") and "NVIDIA GPU not found" in line for line in why)


def test_unknown_machine_matches_nothing(tmp_path: Path, profiles) -> None:
    (tmp_path / "proc").mkdir()
    hw = detect(tmp_path, nvidia_smi=no_gpu)
    assert hw.arch is None and hw.memory_total is None
    assert match_profile(hw, profiles)[0] is None


def test_power_temperature_and_load(tmp_path: Path, profiles) -> None:
    laptop = profiles["laptop-cpu"]
    on_battery = {"BAT0": {"type": "Battery", "capacity": "41", "status": "Discharging"},
                  "AC": {"type": "Mains", "online": "0"}}
    hw = detect(fake_root(tmp_path / "a", cpuinfo=X86_CPUINFO, supplies=on_battery, temps_mc=(40000, 91500),
                          loadavg="9.00 5.00 1.00 2/300 99"), nvidia_smi=no_gpu)
    assert not hw.power.on_ac and hw.power.battery_percent == 41 and hw.temperature_c == 91.5
    blockers = work_blockers(laptop, hw)
    assert len(blockers) == 3
    assert "battery" in blockers[0] and "91.5" in blockers[1] and "busy" in blockers[2]

    plugged = {**on_battery, "AC": {"type": "Mains", "online": "1"}}
    hw = detect(fake_root(tmp_path / "b", cpuinfo=X86_CPUINFO, supplies=plugged), nvidia_smi=no_gpu)
    assert hw.power.on_ac and work_blockers(laptop, hw) == []


def test_no_battery_counts_as_mains(tmp_path: Path) -> None:
    hw = detect(fake_root(tmp_path, cpuinfo=ARM_CPUINFO), nvidia_smi=no_gpu)
    assert hw.power.on_ac and not hw.power.has_battery
    assert set(hw.summary()) == {"arch", "cpu_model", "cpu_cores", "memory_gib", "device_tree_model", "gpus"}
