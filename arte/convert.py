"""llama.cpp's own HF → GGUF converter, taken from the llama-cpp-python source distribution we build.

Contract: ``install_converter(sdist, cache_dir)`` checks the sdist's sha256 against
:data:`LLAMA_CPP_SDIST` (the llama-cpp-python version the project pins, so the converter matches the
llama.cpp that runs the result) and extracts ``convert_hf_to_gguf.py`` with the ``conversion`` package and
the vendored ``gguf-py`` into ``cache_dir/llama.cpp-convert-{version}``; a second call finds it there.
``convert_hf_to_gguf(hf_dir, out, converter)`` runs the converter in a child Python (it puts its own
``gguf-py`` first on ``sys.path``, which must not leak into this process) and raises :class:`ModelError`
with the converter's reason when it refuses a model (an unknown BPE pre-tokenizer, an architecture it
does not know); ``convert_many`` converts several models in one child (the imports are most of the
time). Getting the sdist (``pip download``) is the shell's job (``arte models converter``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from arte.errors import ConfigError, ModelError
from arte.models import sha256_file

__all__ = ["Sdist", "LLAMA_CPP_SDIST", "OUTTYPES", "install_converter", "installed_converter", "convert_hf_to_gguf",
           "convert_many"]


@dataclass(frozen=True)
class Sdist:
    """The source distribution the converter comes from, and what it must hash to (PyPI's sha256)."""

    package: str
    version: str
    filename: str
    sha256: str


LLAMA_CPP_SDIST = Sdist("llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz",
                        "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")
SCRIPT = "convert_hf_to_gguf.py"
_MEMBERS = (SCRIPT, "conversion/", "gguf-py/", "LICENSE")
_STAMP = ".arte-sdist.json"


def _target(cache_dir: str | Path, sdist: Sdist) -> Path:
    return Path(cache_dir) / f"llama.cpp-convert-{sdist.version}"


def installed_converter(cache_dir: str | Path, sdist: Sdist = LLAMA_CPP_SDIST) -> Path | None:
    """The extracted converter directory in ``cache_dir``, if a complete one of ``sdist`` is there."""
    target = _target(cache_dir, sdist)
    try:
        stamp = json.loads((target / _STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return target if stamp.get("sha256") == sdist.sha256 and (target / SCRIPT).is_file() else None


def install_converter(sdist_path: str | Path, cache_dir: str | Path, sdist: Sdist = LLAMA_CPP_SDIST) -> Path:
    """Verify ``sdist_path`` and extract the converter into ``cache_dir`` (once); returns its directory."""
    found = installed_converter(cache_dir, sdist)
    if found is not None:
        return found
    path = Path(sdist_path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist (the {sdist.package} {sdist.version} source distribution)")
    sha = sha256_file(path)
    if sha != sdist.sha256:
        raise ModelError(f"{path} has sha256 {sha[:12]}…, not the {sdist.package} {sdist.version} source "
                         f"distribution ({sdist.sha256[:12]}…); download it again")
    target = _target(cache_dir, sdist)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = f"{sdist.filename.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(_MEMBERS) and (m.isfile() or m.isdir())]
            if not any(m.name == prefix + SCRIPT for m in members):
                raise ModelError(f"{path} has no vendor/llama.cpp/{SCRIPT}")
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(tmp, members=members, filter="data")
        (tmp / _STAMP).write_text(json.dumps({"package": sdist.package, "version": sdist.version,
                                              "sha256": sdist.sha256}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"could not extract the converter from {path}: {e}") from e
    return target


# Runs the converter's own __main__ once per job in one child process (torch, transformers and the
# converter's modules load once), and reports each job's outcome on the last line of stdout.
_DRIVER = r"""
import json, os, runpy, sys
script, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, os.path.dirname(script))   # as `python convert_hf_to_gguf.py` would: its conversion package
results = []
for src, out, outtype in jobs:
    sys.argv = [script, src, "--outfile", out, "--outtype", outtype]
    try:
        runpy.run_path(script, run_name="__main__")
        results.append(None)
    except SystemExit as e:
        results.append(None if e.code in (None, 0) else f"exit {e.code}")
    except Exception as e:
        results.append(f"{type(e).__name__}: {e}")
print("ARTE-CONVERT " + json.dumps(results))
"""


def convert_many(jobs: Sequence[tuple[str | Path, str | Path]], converter: str | Path, *, outtype: str = "f16",
                 python: str = sys.executable, timeout_s: float = 3600.0) -> list[Path | ModelError]:
    """Convert each ``(hf_dir, out_path)`` of ``jobs`` with llama.cpp's converter (the directory
    :func:`install_converter` returned) in one child process; per job, the GGUF written or the
    :class:`ModelError` saying why the converter refused it. ``outtype``: one of :data:`OUTTYPES`."""
    if outtype not in OUTTYPES:
        raise ConfigError("outtype", f"must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    script = Path(converter) / SCRIPT
    if not script.is_file():
        raise ModelError(f"{converter} holds no {SCRIPT}: run `arte models converter`")
    todo: list[tuple[str, str, str]] = []
    for src, out in jobs:
        if not (Path(src) / "config.json").is_file():
            raise ModelError(f"{src} is not a Hugging Face model directory (no config.json)")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        todo.append((str(src), str(Path(out).with_name(Path(out).name + ".tmp")), outtype))
    try:
        proc = subprocess.run([python, "-c", _DRIVER, str(script), json.dumps(todo)], capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ModelError(f"llama.cpp's converter did not finish {len(todo)} conversions in {timeout_s:g} s") from None
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
    if proc.returncode != 0 or not last[0].startswith("ARTE-CONVERT "):
        raise ModelError(f"llama.cpp's converter crashed (exit {proc.returncode}):\n{tail}")
    results: list[Path | ModelError] = []
    for (src, tmp, _), (_, out), why in zip(todo, jobs, json.loads(last[0].split(" ", 1)[1])):
        if why is None and Path(tmp).is_file():
            os.replace(tmp, out)
            results.append(Path(out))
        else:
            Path(tmp).unlink(missing_ok=True)
            results.append(ModelError(f"llama.cpp's converter ({LLAMA_CPP_SDIST.package} {LLAMA_CPP_SDIST.version}) "
                                      f"could not convert {src}: {why or 'no output'}"
                                      + (f"\n{tail}" if why is None or why.startswith("exit") else "")))
    return results


def convert_hf_to_gguf(hf_dir: str | Path, out_path: str | Path, converter: str | Path, *, outtype: str = "f16",
                       python: str = sys.executable, timeout_s: float = 3600.0) -> Path:
    """Convert the transformers model in ``hf_dir`` to a GGUF at ``out_path`` (see :func:`convert_many`);
    :class:`ModelError` with the converter's reason if it refuses."""
    result = convert_many([(hf_dir, out_path)], converter, outtype=outtype, python=python, timeout_s=timeout_s)[0]
    if isinstance(result, ModelError):
        raise result
    return result
