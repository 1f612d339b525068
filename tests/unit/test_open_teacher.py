"""One way to open a teacher (``arte.backends.open_teacher``): which runtime each setting picks, what each
adapter means to it, and the refusals that name the setting. Remote teachers run against
``httpx.MockTransport``; the torch teacher loads a tiny random llama (tests/support/tiny_hf.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arte.backends import open_teacher, resolve_torch
from arte.errors import ConfigError, ModelError
from arte.models import ModelRef


def _endpoint(seen: list[dict]):
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append({"body": json.loads(request.content), "auth": request.headers.get("authorization")})
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    return httpx.MockTransport(handle)


def test_an_endpoint_teacher_sends_the_served_adapter_as_the_model() -> None:
    seen: list[dict] = []
    t = open_teacher(None, endpoint="http://gpu:8000/v1", endpoint_model="llama-70b", adapter="arte-coh-job",
                     api_key="k", transport=_endpoint(seen), structured_output="none")
    try:
        assert t.chat([[{"role": "user", "content": "hi"}]]) == ["ok"]
        assert t.name == "llama-70b" and t.adapter == "arte-coh-job"
    finally:
        t.close()
    assert seen[0]["body"]["model"] == "arte-coh-job" and seen[0]["auth"] == "Bearer k"


def test_refusals_name_the_setting(tmp_path: Path) -> None:
    gguf = ModelRef("gguf", tmp_path / "m.gguf", "m")
    hf = ModelRef("hf", tmp_path, "m")
    (tmp_path / "adapter_config.json").write_text("{}")
    cases = [
        (lambda: open_teacher(gguf, "tpu"), ConfigError, "backend"),
        (lambda: open_teacher(None, "openai", endpoint="http://x"), ConfigError, "endpoint"),
        (lambda: open_teacher(None, "openai", endpoint="http://x", endpoint_model="m", adapter=tmp_path),
         ConfigError, "adapter"),
        (lambda: open_teacher(None, "llama"), ConfigError, "model"),
    ]
    for call, exc, field in cases:
        with pytest.raises(exc) as e:
            call()
        assert e.value.field == field
    with pytest.raises(ModelError, match="needs a GGUF file"):
        open_teacher(hf, "llama")
    with pytest.raises(ModelError, match="GGUF LoRA adapter file"):   # a PEFT directory on llama.cpp
        open_teacher(gguf, "llama", adapter=tmp_path)


def test_torch_device_and_dtype() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("checks the CPU answers")
    assert resolve_torch() == ("cpu", torch.float32)
    assert resolve_torch("cpu", "bf16") == ("cpu", torch.bfloat16)
    for device, dtype, field in [("cuda", "auto", "device"), ("tpu", "auto", "device"), ("cpu", "int4", "dtype")]:
        with pytest.raises(ConfigError) as e:
            resolve_torch(device, dtype)
        assert e.value.field == field


def test_auto_opens_an_hf_directory_on_torch_in_the_asked_dtype(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from arte.backends.hf_teacher import TorchTeacher
    from tests.support.tiny_hf import build_tiny_hf

    ref = ModelRef("hf", build_tiny_hf(tmp_path / "tiny"), "tiny")
    t = open_teacher(ref, device="cpu", dtype="bf16")
    assert isinstance(t, TorchTeacher) and next(t.model.parameters()).dtype == torch.bfloat16
    assert t.adapter is None and len(t.chat([[{"role": "user", "content": "Question:"}]], max_new_tokens=3)) == 1
