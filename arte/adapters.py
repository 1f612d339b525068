"""Versioned adapter store over a directory the caller gives, with one active version and atomic switches.

Layout::

    root/
      versions/v0001/   the adapter's files + manifest.json
      versions/v0002/
      active.json       {"version": "v0002", "previous": "v0001", "since": …}; absent = the base model

Contract: ``add`` copies the files into a temporary directory, writes ``manifest.json`` (sha256 and size
of every file, the base model's name and sha256, metrics, the keep/reject decision, training settings,
the parent version) and renames it into place, so a version is either complete or absent. ``activate``
verifies the version's files against its manifest, then replaces ``active.json`` in one ``os.replace``:
readers see the old or the new active version, never a mix. Nothing is deleted unless asked (``remove``,
which refuses the active version). Timestamps come from an injectable clock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from arte.errors import ConfigError, ModelError
from arte.models import sha256_file

__all__ = ["AdapterStore", "AdapterVersion", "MANIFEST", "FORMAT", "stamp_adapter_base"]

MANIFEST = "manifest.json"
FORMAT = "arte-adapter/1"
_NAME = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class AdapterVersion:
    """One stored adapter: its directory and manifest."""

    version: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        """Path of one of the version's files (``ModelError`` if the manifest does not list it)."""
        if name not in self.manifest["files"]:
            raise ModelError(f"adapter {self.version} has no file {name!r} (it has {', '.join(self.manifest['files'])})")
        return self.path / name

    @property
    def base_sha256(self) -> str | None:
        return self.manifest.get("base_model", {}).get("sha256")


def stamp_adapter_base(adapter_dir: str | Path, base: str, revision: str | None = None) -> None:
    """Record ``base`` (and ``revision``) as the base of the PEFT adapter in ``adapter_dir``: its
    ``adapter_config.json`` (``base_model_name_or_path``, ``revision``, what ``AutoPeftModel`` loads) and
    its model card's ``base_model``. PEFT writes the directory it loaded the base from, a path of this
    machine (a conversion cache); :func:`arte.models.adapter_base` says what to write instead."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"], cfg["revision"] = base, revision
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    card = Path(adapter_dir) / "README.md"
    if card.is_file():
        text = re.sub(r"(?m)^base_model: .*$", f"base_model: {base}", card.read_text(), count=1)
        card.write_text(re.sub(r"(?m)^- '?base_model:adapter:[^\n]*$", f"- base_model:adapter:{base}", text))


class AdapterStore:
    """Adapters of one device (or one student), versioned under ``root``."""

    def __init__(self, root: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.clock = clock
        self._versions = self.root / "versions"
        self._active = self.root / "active.json"

    # ---- reading ----------------------------------------------------------------------------------

    def versions(self) -> list[AdapterVersion]:
        """Every complete version, oldest first."""
        if not self._versions.is_dir():
            return []
        names = sorted((p.name for p in self._versions.iterdir() if _NAME.match(p.name) and (p / MANIFEST).is_file()),
                       key=lambda n: int(n[1:]))
        return [self.get(n) for n in names]

    def get(self, version: str) -> AdapterVersion:
        """A version by name (``v0003``)."""
        if not _NAME.match(version):
            raise ConfigError("version", f"expected a version name like 'v0001', got {version!r}")
        path = self._versions / version
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise ModelError(f"adapter version {version} not found in {self.root}") from None
        except json.JSONDecodeError as e:
            raise ModelError(f"{path / MANIFEST} is corrupt: {e}") from None
        return AdapterVersion(version, path, manifest)

    def active(self) -> AdapterVersion | None:
        """The active version, or None when the base model runs without an adapter."""
        try:
            state = json.loads(self._active.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise ModelError(f"{self._active} is corrupt: {e}") from None
        return self.get(state["version"]) if state.get("version") else None

    def verify(self, version: str) -> AdapterVersion:
        """Check every file of ``version`` against its manifest; ``ModelError`` names the first mismatch."""
        v = self.get(version)
        for name, meta in v.manifest["files"].items():
            p = v.path / name
            if not p.is_file():
                raise ModelError(f"adapter {version}: file {name} is missing")
            sha = sha256_file(p)
            if sha != meta["sha256"]:
                raise ModelError(f"adapter {version}: file {name} is corrupt (sha256 {sha[:12]}…, manifest "
                                 f"{meta['sha256'][:12]}…)")
        return v

    # ---- writing ----------------------------------------------------------------------------------

    def add(self, files: Mapping[str, str | Path], *, base_model: Mapping[str, Any],
            metrics: Mapping[str, Any] | None = None, decision: Mapping[str, Any] | None = None,
            training: Mapping[str, Any] | None = None) -> AdapterVersion:
        """Store a new version holding copies of ``files`` (name in the store → source path)."""
        if not files:
            raise ConfigError("files", "an adapter version needs at least one file")
        for name, src in files.items():
            if "/" in name or name in ("", ".", "..", MANIFEST):
                raise ConfigError("files", f"invalid file name {name!r}")
            if not Path(src).is_file():
                raise ModelError(f"adapter file {src} does not exist")
        self._versions.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[1:]) for p in self._versions.iterdir() if _NAME.match(p.name)]
        version = f"v{max(existing, default=0) + 1:04d}"
        tmp = self._versions / f".tmp-{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            entries = {}
            for name, src in files.items():
                shutil.copyfile(src, tmp / name)
                entries[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            active = self.active()
            manifest = {"format": FORMAT, "version": version, "created_at": self.clock(), "files": entries,
                        "base_model": dict(base_model), "metrics": dict(metrics or {}),
                        "decision": dict(decision or {}), "training": dict(training or {}),
                        "parent": active.version if active else None}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
            os.rename(tmp, self._versions / version)   # fails if another writer took the name
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(version)

    def activate(self, version: str | None) -> AdapterVersion | None:
        """Make ``version`` active (None: the base model), after verifying its files. Atomic."""
        v = self.verify(version) if version is not None else None
        current = self.active()
        state = {"version": version, "previous": current.version if current else None, "since": self.clock()}
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._active.with_name(f".active.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self._active)
        return v

    def remove(self, version: str) -> None:
        """Delete a version that is not active."""
        active = self.active()
        if active is not None and active.version == version:
            raise ConfigError("version", f"{version} is active; activate another version (or None) first")
        shutil.rmtree(self.get(version).path)
