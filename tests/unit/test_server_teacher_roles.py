"""How the server opens its elicit/tailor teacher from the settings (``server.job_handlers._open_teacher``): which
runtime, which model and which form of the cohort's adapter each role's settings give ``open_teacher``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from arte.models import ModelRef
from server import job_handlers, serving
from server.settings import ServerSettings


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_open(ref: Any, backend: str = "auto", **kw: Any) -> dict[str, Any]:
        calls.append({"ref": ref, "backend": backend, **kw})
        return calls[-1]

    monkeypatch.setattr(job_handlers, "open_teacher", fake_open)
    monkeypatch.setattr(job_handlers, "resolve_model", lambda ref, cache: ModelRef("gguf", Path(ref), "m"))
    monkeypatch.setattr(serving, "ensure_served", lambda settings, adapter: serving.served_name(adapter))
    monkeypatch.setattr(serving, "export_gguf", lambda adapter, ref: calls.append({"exported": adapter}))
    return calls


def _settings(tmp_path: Path, **kw: Any) -> ServerSettings:
    return ServerSettings(data_dir=tmp_path, **kw)


def test_default_settings_draft_on_llama_and_tailor_on_torch_with_the_peft_adapter(tmp_path, opened) -> None:
    s = _settings(tmp_path, teacher_model="/m/teacher.gguf", drafting_gpu_layers=-1)
    job_handlers._open_teacher(s, None)
    job_handlers._open_teacher(s, "/data/adapters/coh_a/job_b")
    assert [(c["backend"], c["adapter"], c["n_gpu_layers"]) for c in opened] == [
        ("auto", None, -1), ("auto", "/data/adapters/coh_a/job_b", -1)]   # auto: a PEFT dir goes to torch
    assert str(opened[0]["ref"].path) == "/m/teacher.gguf" and opened[1]["adapter_name"] == "cohort"


def test_an_endpoint_gets_the_served_name_and_the_key(tmp_path, opened) -> None:
    s = _settings(tmp_path, drafting_endpoint="http://gpu:8000", drafting_endpoint_model="teacher",
                  drafting_api_key="sk", drafting_adapter_serving="vllm", drafting_structured_output="vllm-guided")
    job_handlers._open_teacher(s, "/data/adapters/coh_a/job_b")
    (c,) = opened
    assert (c["ref"], c["backend"], c["endpoint"], c["endpoint_model"], c["api_key"], c["adapter"]) == (
        None, "openai", "http://gpu:8000", "teacher", "sk", "arte-coh_a-job_b")
    assert c["structured_output"] == "vllm-guided"


def test_an_endpoint_that_serves_no_adapters_tailors_here_on_torch(tmp_path, opened) -> None:
    s = _settings(tmp_path, drafting_endpoint="http://gpu:8000", teacher_model="/m/hf-dir")
    job_handlers._open_teacher(s, None)
    job_handlers._open_teacher(s, "/data/adapters/coh_a/job_b")
    assert [c["backend"] for c in opened] == ["openai", "torch"]
    assert opened[1]["adapter"] == "/data/adapters/coh_a/job_b" and str(opened[1]["ref"].path) == "/m/hf-dir"


def test_llama_applies_the_adapters_gguf_export(tmp_path, opened) -> None:
    adapter = tmp_path / "adapters" / "coh_a" / "job_b"
    s = _settings(tmp_path, drafting_backend="llama", drafting_model="/m/teacher.gguf", teacher_model="/m/hf-dir")
    job_handlers._open_teacher(s, str(adapter))
    assert opened[0] == {"exported": adapter}          # exported on demand (no llama-cpp serving ran)
    assert opened[1]["backend"] == "llama" and opened[1]["adapter"] == str(adapter / "adapter.gguf")
    assert str(opened[1]["ref"].path) == "/m/teacher.gguf"


@pytest.mark.parametrize("kw, says", [({"drafting_adapter_serving": "vllm"}, "drafting_endpoint"),
                                      ({"drafting_backend": "openai"}, "drafting_endpoint"),
                                      ({"drafting_dtype": "int4"}, "drafting_dtype")])
def test_inconsistent_settings_are_refused(tmp_path, kw, says) -> None:
    with pytest.raises(ValidationError, match=says):
        _settings(tmp_path, **kw)
