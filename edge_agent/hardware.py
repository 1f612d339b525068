"""Hardware detection, profile matching and the "may work now" check.

Contract: :func:`detect` reads the device from files under ``root`` (``/`` on a real device; a temp dir in
tests holds a fake ``proc/`` and ``sys/`` tree): ``/proc/cpuinfo``, ``/proc/meminfo``, ``/proc/loadavg``,
``/proc/device-tree/model`` (Raspberry Pi, Jetson), ``/sys/class/power_supply/*`` and
``/sys/class/thermal/thermal_zone*/temp``. The NVIDIA driver is probed by ``nvidia_smi``, an injectable
callable returning the output of ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`` or
None. Nothing here raises on a missing file: absent facts are None and the explanation says so.

:func:`match_profile` picks the matching profile with the most conditions and explains every decision.
:func:`work_blockers` says why compute work may not run now (empty list: it may).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from firmware_profiles import Profile

__all__ = ["Hardware", "PowerState", "detect", "nvidia_smi_query", "match_profile", "work_blockers"]

GIB = 1024 ** 3


@dataclass(frozen=True)
class PowerState:
    """``on_ac``: True when a mains/USB supply is online or the device has no battery at all."""

    on_ac: bool
    has_battery: bool
    battery_percent: int | None = None


@dataclass(frozen=True)
class Hardware:
    """What was detected. ``None`` means the fact could not be read."""

    arch: str | None
    cpu_model: str | None
    cpu_cores: int
    memory_total: int | None            # bytes
    memory_available: int | None        # bytes
    device_tree_model: str | None
    gpus: tuple[str, ...] = ()          # from nvidia-smi: "name, memory"
    nvidia_smi: bool = False
    power: PowerState = field(default_factory=lambda: PowerState(True, False))
    temperature_c: float | None = None  # the hottest thermal zone
    load_1min: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What enrollment may tell the server: hardware facts only, no user data."""
        return {"arch": self.arch, "cpu_model": self.cpu_model, "cpu_cores": self.cpu_cores,
                "memory_gib": round(self.memory_total / GIB, 1) if self.memory_total else None,
                "device_tree_model": self.device_tree_model, "gpus": list(self.gpus)}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpuinfo(text: str | None) -> tuple[str | None, str | None, int]:
    """(arch, model, cores) from /proc/cpuinfo; arch from the fields only x86 or arm kernels write."""
    if not text:
        return None, None, os.cpu_count() or 1
    fields: dict[str, str] = {}
    cores = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "processor":
            cores += 1
        fields.setdefault(key, value.strip())
    arch = None
    if "vendor_id" in fields or "flags" in fields:
        arch = "x86_64"
    elif "CPU implementer" in fields or "Features" in fields:
        arch = "aarch64"
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware")
    if model is None and "CPU part" in fields:
        model = f"ARM CPU part {fields['CPU part']}"
    return arch, model, max(cores, 1)


def _meminfo(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    vals = {m.group(1): int(m.group(2)) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
    return vals.get("MemTotal"), vals.get("MemAvailable")


def _power(root: Path) -> PowerState:
    base = root / "sys/class/power_supply"
    online_supply = False
    batteries: list[int | None] = []
    for supply in sorted(base.glob("*")) if base.is_dir() else []:
        kind = (_read(supply / "type") or "").strip()
        if kind == "Battery":
            cap = (_read(supply / "capacity") or "").strip()
            batteries.append(int(cap) if cap.isdigit() else None)
        elif kind in ("Mains", "USB", "USB_C", "USB_PD"):
            online_supply |= (_read(supply / "online") or "").strip() == "1"
    if not batteries:
        return PowerState(on_ac=True, has_battery=False)
    return PowerState(on_ac=online_supply, has_battery=True, battery_percent=batteries[0])


def _temperature(root: Path) -> float | None:
    temps = []
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        raw = (_read(zone / "temp") or "").strip()
        if raw.lstrip("-").isdigit():
            temps.append(int(raw) / 1000.0)
    return max(temps) if temps else None


def nvidia_smi_query() -> str | None:
    """Run nvidia-smi when it is on PATH; its CSV output, or None without a driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def detect(root: str | Path = "/", nvidia_smi: Callable[[], str | None] = nvidia_smi_query) -> Hardware:
    """Detect the device under ``root``."""
    r = Path(root)
    arch, model, cores = _cpuinfo(_read(r / "proc/cpuinfo"))
    total, available = _meminfo(_read(r / "proc/meminfo"))
    dt = _read(r / "proc/device-tree/model")
    dt = dt.strip("\x00\n ") if dt else None
    load = (_read(r / "proc/loadavg") or "").split()
    smi = nvidia_smi()
    gpus = tuple(line.strip() for line in (smi or "").splitlines() if line.strip())
    return Hardware(arch=arch, cpu_model=model, cpu_cores=cores, memory_total=total, memory_available=available,
                    device_tree_model=dt or None, gpus=gpus, nvidia_smi=smi is not None, power=_power(r),
                    temperature_c=_temperature(r), load_1min=float(load[0]) if load else None)


def _conditions(p: Profile, hw: Hardware) -> list[tuple[bool, str]]:
    m = p.match
    out: list[tuple[bool, str]] = []
    if m.device_tree:
        ok = hw.device_tree_model is not None and any(s in hw.device_tree_model for s in m.device_tree)
        out.append((ok, f"device-tree model {hw.device_tree_model!r} "
                        f"{'contains' if ok else 'does not contain'} one of {list(m.device_tree)}"))
    if m.arch:
        out.append((hw.arch in m.arch, f"architecture {hw.arch} {'in' if hw.arch in m.arch else 'not in'} "
                                       f"{list(m.arch)}"))
    if m.nvidia_gpu is not None:
        has = bool(hw.gpus)
        out.append((has == m.nvidia_gpu, f"NVIDIA GPU {'found' if has else 'not found'} by nvidia-smi "
                                         f"(profile needs {'one' if m.nvidia_gpu else 'none'})"))
    if m.min_memory_gib > 0:
        gib = (hw.memory_total or 0) / GIB
        out.append((gib >= m.min_memory_gib, f"memory {gib:.1f} GiB (profile needs {m.min_memory_gib} GiB)"))
    return out


def match_profile(hw: Hardware, profiles: Mapping[str, Profile]) -> tuple[Profile | None, list[str]]:
    """The matching profile with the most conditions (ties: by id), and one line per profile saying why."""
    candidates: list[tuple[int, str]] = []
    lines: list[str] = []
    for pid, p in sorted(profiles.items()):
        conds = _conditions(p, hw)
        ok = all(c for c, _ in conds)
        if ok:
            candidates.append((-len(conds), pid))
        lines.append(f"{pid}: {'matches' if ok else 'no match'} ({'; '.join(t for _, t in conds) or 'no rules'})")
    if not candidates:
        return None, lines
    best = profiles[min(candidates)[1]]
    n = best.match.n_conditions
    lines.insert(0, f"picked {best.id}: the matching profile with the most specific rules "
                    f"({n} condition{'s' * (n != 1)})")
    return best, lines


def work_blockers(p: Profile, hw: Hardware) -> list[str]:
    """Why compute work may not run now under ``p.when`` (empty: it may run)."""
    w = p.when
    out = []
    if w.only_on_ac_power and not hw.power.on_ac:
        out.append(f"on battery ({hw.power.battery_percent}%); profile {p.id} works only on AC power")
    if w.max_temperature_c is not None and hw.temperature_c is not None and hw.temperature_c > w.max_temperature_c:
        out.append(f"temperature {hw.temperature_c:.1f} C is above the profile's {w.max_temperature_c} C")
    if w.only_when_idle and hw.load_1min is not None:
        per_core = hw.load_1min / max(hw.cpu_cores, 1)
        if per_core > w.max_load_per_core:
            out.append(f"busy: 1-minute load {hw.load_1min:.2f} on {hw.cpu_cores} cores = {per_core:.2f}/core, "
                       f"above the profile's idle limit {w.max_load_per_core}")
    return out
