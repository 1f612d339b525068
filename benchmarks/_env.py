"""Machine and version facts that every benchmark records in its last JSON line."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
from typing import Iterable

__all__ = ["machine_info", "versions", "peak_rss_mib"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    """CPU model, logical cores, RAM, OS and Python."""
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": mem, "os": platform.platform(),
            "python": platform.python_version(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None when absent)."""
    out: dict[str, str | None] = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
