"""llama.cpp's converter from the llama-cpp-python sdist: extracted once, checked by sha256; several models
converted in one child process, each refusal reported with the converter's reason (a stand-in converter
here; the real one runs in tests/slow/test_families.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from arte.convert import (
    SCRIPT,
    Sdist,
    convert_hf_to_gguf,
    convert_many,
    install_converter,
    installed_converter,
)
from arte.errors import ConfigError, ModelError
from arte.models import sha256_file

# A stand-in for convert_hf_to_gguf.py: imports its `conversion` package as the real one does, writes the
# outfile, refuses a model whose config says so (as the real one raises on an unknown pre-tokenizer).
FAKE = '''
import json, sys
from pathlib import Path
from conversion import refuse
src, out = Path(sys.argv[1]), Path(sys.argv[sys.argv.index("--outfile") + 1])
refuse(json.loads((src / "config.json").read_text()))
out.write_bytes(b"GGUF" + sys.argv[sys.argv.index("--outtype") + 1].encode())
'''
CONVERSION = '''
def refuse(cfg):
    if cfg.get("refuse"):
        raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
'''


def make_sdist(tmp: Path, name: str = "fake_pkg-1.0") -> tuple[Path, Sdist]:
    path = tmp / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, text in ((SCRIPT, FAKE), ("conversion/__init__.py", CONVERSION), ("gguf-py/gguf/__init__.py", ""),
                             ("LICENSE", "MIT"), ("src/llama.cpp", "not extracted")):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/vendor/llama.cpp/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, Sdist("fake-pkg", "1.0", path.name, sha256_file(path))


def test_the_converter_is_extracted_once_and_checked(tmp_path: Path) -> None:
    sdist, meta = make_sdist(tmp_path)
    cache = tmp_path / "tools"
    assert installed_converter(cache, meta) is None
    conv = install_converter(sdist, cache, meta)
    assert conv == cache / "llama.cpp-convert-1.0" and (conv / SCRIPT).is_file() and (conv / "conversion").is_dir()
    assert not (conv / "src").exists()   # only the converter, not llama.cpp's sources
    assert installed_converter(cache, meta) == conv
    assert install_converter(tmp_path / "gone.tar.gz", cache, meta) == conv   # found: no sdist needed
    wrong = Sdist("fake-pkg", "2.0", sdist.name, "0" * 64)
    with pytest.raises(ModelError, match="sha256"):
        install_converter(sdist, cache, wrong)
    assert installed_converter(cache, wrong) is None


def test_several_models_convert_in_one_process_and_refusals_say_why(tmp_path: Path) -> None:
    sdist, meta = make_sdist(tmp_path)
    conv = install_converter(sdist, tmp_path / "tools", meta)
    for name, cfg in (("good", "{}"), ("bad", '{"refuse": true}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(cfg)
    good, bad = convert_many([(tmp_path / "good", tmp_path / "out" / "g.gguf"),
                              (tmp_path / "bad", tmp_path / "out" / "b.gguf")], conv, outtype="f32")
    assert good == tmp_path / "out" / "g.gguf" and good.read_bytes() == b"GGUFf32"
    assert isinstance(bad, ModelError) and "BPE pre-tokenizer was not recognized" in str(bad)
    assert not (tmp_path / "out" / "b.gguf").exists() and not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(ModelError, match="not recognized"):
        convert_hf_to_gguf(tmp_path / "bad", tmp_path / "b.gguf", conv)
    with pytest.raises(ModelError, match="no config.json"):
        convert_hf_to_gguf(tmp_path, tmp_path / "x.gguf", conv)
    with pytest.raises(ConfigError) as e:
        convert_hf_to_gguf(tmp_path / "good", tmp_path / "x.gguf", conv, outtype="q4_0")
    assert e.value.field == "outtype"
