"""The adapter store: versions, manifests with sha256, the active pointer and its atomic switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arte.adapters import AdapterStore
from arte.errors import ConfigError, ModelError
from arte.models import sha256_file

BASE = {"name": "tiny", "sha256": "ab" * 32}


def files(tmp: Path, tag: str) -> dict[str, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{tag}.gguf").write_bytes(f"gguf-{tag}".encode())
    (tmp / f"{tag}.json").write_text(json.dumps({"tag": tag}))
    return {"adapter.gguf": tmp / f"{tag}.gguf", "adapter_config.json": tmp / f"{tag}.json"}


def clock_from(start: float):
    t = [start]

    def clock() -> float:
        t[0] += 1
        return t[0]

    return clock


def test_versions_are_numbered_and_manifests_hash_every_file(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store", clock=clock_from(100))
    assert store.versions() == [] and store.active() is None
    v1 = store.add(files(tmp_path / "a", "a"), base_model=BASE, metrics={"acc": 0.5})
    v2 = store.add(files(tmp_path / "b", "b"), base_model=BASE, decision={"keep": False})
    assert [v.version for v in store.versions()] == ["v0001", "v0002"]
    m = v1.manifest
    assert m["files"]["adapter.gguf"]["sha256"] == sha256_file(tmp_path / "a" / "a.gguf")
    assert m["files"]["adapter.gguf"]["bytes"] == len(b"gguf-a")
    assert m["base_model"] == BASE and m["metrics"] == {"acc": 0.5} and m["created_at"] == 101
    assert v1.base_sha256 == BASE["sha256"] and v2.manifest["decision"] == {"keep": False}
    assert v1.file("adapter.gguf").read_bytes() == b"gguf-a"
    with pytest.raises(ModelError, match="no file"):
        v1.file("model.onnx")
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "store" / "versions").iterdir())


def test_activate_switches_atomically_and_records_the_previous(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "s", clock=clock_from(0))
    v1 = store.add(files(tmp_path / "a", "a"), base_model=BASE)
    store.activate(v1.version)
    v2 = store.add(files(tmp_path / "b", "b"), base_model=BASE)
    assert v2.manifest["parent"] == "v0001"
    store.activate("v0002")
    assert store.active().version == "v0002"
    state = json.loads((tmp_path / "s" / "active.json").read_text())
    assert state["previous"] == "v0001"
    store.activate(None)
    assert store.active() is None
    assert [p.name for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")] == []


def test_a_corrupt_version_cannot_be_activated_and_the_old_one_stays(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "s")
    store.activate(store.add(files(tmp_path / "a", "a"), base_model=BASE).version)
    v2 = store.add(files(tmp_path / "b", "b"), base_model=BASE)
    (v2.path / "adapter.gguf").write_bytes(b"tampered")
    with pytest.raises(ModelError, match="corrupt"):
        store.activate(v2.version)
    assert store.active().version == "v0001"
    (v2.path / "adapter.gguf").unlink()
    with pytest.raises(ModelError, match="missing"):
        store.verify(v2.version)


def test_remove_refuses_the_active_version(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "s")
    v1 = store.add(files(tmp_path / "a", "a"), base_model=BASE)
    v2 = store.add(files(tmp_path / "b", "b"), base_model=BASE)
    store.activate(v1.version)
    with pytest.raises(ConfigError, match="active"):
        store.remove(v1.version)
    store.remove(v2.version)
    assert [v.version for v in store.versions()] == ["v0001"]
    # numbering never reuses a name still on disk, and continues after the highest
    assert store.add(files(tmp_path / "c", "c"), base_model=BASE).version == "v0002"


def test_bad_input_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "s")
    with pytest.raises(ModelError, match="does not exist"):
        store.add({"adapter.gguf": tmp_path / "missing"}, base_model=BASE)
    with pytest.raises(ConfigError, match="files"):
        store.add({"../evil": files(tmp_path / "a", "a")["adapter.gguf"]}, base_model=BASE)
    with pytest.raises(ConfigError, match="version"):
        store.get("latest")
    with pytest.raises(ModelError, match="not found"):
        store.get("v0042")
    assert store.versions() == []
