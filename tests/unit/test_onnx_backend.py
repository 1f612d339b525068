"""The ONNX backend's refusals (no model is exported here; tests/slow/test_sft_real.py runs one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte.backends import open_student
from arte.errors import ConfigError, ModelError
from arte.models import ModelRef


def test_a_directory_without_model_onnx_is_refused(tmp_path: Path) -> None:
    from arte.backends.onnx import OnnxStudent, is_onnx_dir

    (tmp_path / "config.json").write_text("{}")
    assert not is_onnx_dir(tmp_path)
    with pytest.raises(ModelError, match="model.onnx"):
        OnnxStudent(tmp_path)


def test_open_student_onnx_refuses_a_lora_path_and_a_missing_export_dir(tmp_path: Path) -> None:
    ref = ModelRef("hf", tmp_path, "plain-hf")
    with pytest.raises(ConfigError) as e:
        open_student(ref, "onnx", lora_path=tmp_path / "a.gguf")
    assert e.value.field == "lora_path"
    with pytest.raises(ModelError, match="export_dir"):
        open_student(ref, "onnx")
