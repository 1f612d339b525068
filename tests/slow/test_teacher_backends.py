"""The llama.cpp and torch teachers on the embedded model: chat template, sampling, stops, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MSGS = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]
USER_ONLY = [{"role": "user", "content": "Write one question about football."}]


@pytest.fixture(scope="module")
def llama_teacher(default_model):
    from arte.backends.llama_teacher import LlamaCppTeacher

    # One thread: on a shared 2-core machine two llama.cpp threads spin-wait each other (RUNTIME-NOTES).
    t = LlamaCppTeacher(default_model.path, n_threads=1, n_ctx=2048, n_parallel=4, name=default_model.name)
    yield t
    t.close()


@pytest.fixture(scope="module")
def torch_teacher(default_model):
    import torch

    from arte.backends.hf_teacher import TorchTeacher
    from arte_cli.home import convert_dir

    torch.set_num_threads(1)   # 2 threads spin-wait on a shared 2-core machine
    return TorchTeacher.from_ref(default_model, convert_dir=convert_dir(), batch_size=4)


def test_gguf_template_renders_like_the_hf_tokenizer(llama_teacher, torch_teacher) -> None:
    for msgs in (MSGS, USER_ONLY):
        assert llama_teacher.render(msgs) == torch_teacher.render(msgs)
    text = llama_teacher.render(USER_ONLY)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    toks = llama_teacher.prompt_tokens(USER_ONLY)
    assert toks[0] == 1 and toks.count(1) == 3     # <|im_start|> parsed as its control token, 3 turns


def test_llama_sampling_is_reproducible_and_greedy_is_deterministic(llama_teacher) -> None:
    convs = [MSGS, USER_ONLY, MSGS]
    a = llama_teacher.chat(convs, temperature=1.0, max_new_tokens=12, seed=3)
    b = llama_teacher.chat(convs, temperature=1.0, max_new_tokens=12, seed=3)
    assert a == b and all(isinstance(x, str) for x in a)
    c = llama_teacher.chat(convs, temperature=1.0, max_new_tokens=12, seed=4)
    assert c != a
    g1 = llama_teacher.chat([MSGS, MSGS], temperature=0.0, max_new_tokens=12)
    assert g1[0] == g1[1] and g1[0].strip()


def test_llama_stop_strings_end_the_reply(llama_teacher) -> None:
    full = llama_teacher.chat([USER_ONLY], temperature=0.0, max_new_tokens=24)[0]
    word = full.split()[2]
    cut = llama_teacher.chat([USER_ONLY], temperature=0.0, max_new_tokens=24, stop=[word])[0]
    assert cut == full[:full.index(word)]


def test_llama_context_overflow_is_a_clear_error(llama_teacher) -> None:
    from arte.errors import BackendError

    with pytest.raises(BackendError, match="does not fit"):
        llama_teacher.chat([USER_ONLY], max_new_tokens=4000)


def _random_adapter(base, path: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(path)
    peft_model.unload()          # give the base back untouched
    return path


def test_torch_teacher_adapters_switch_by_name(tmp_path, default_model) -> None:
    import torch

    from arte.backends.hf import load_hf
    from arte.backends.hf_teacher import TorchTeacher
    from arte.errors import ConfigError
    from arte_cli.home import convert_dir

    torch.set_num_threads(1)   # 2 threads spin-wait on a shared 2-core machine
    base, tok = load_hf(default_model, convert_dir=convert_dir())
    a = _random_adapter(base, tmp_path / "a", 1)
    b = _random_adapter(base, tmp_path / "b", 2)
    t = TorchTeacher(base, tok, name=default_model.name, batch_size=2)
    completion = ["Blue."]
    ref = t.completion_logprobs([MSGS], completion)[0]
    t.load_adapter("cohort-a", a)
    t.load_adapter("cohort-b", b)
    assert t.adapter == "cohort-b" and set(t.adapters) == {"cohort-a", "cohort-b"}
    lp_b = t.completion_logprobs([MSGS], completion)[0]
    t.set_adapter("cohort-a")
    lp_a = t.completion_logprobs([MSGS], completion)[0]
    t.set_adapter(None)
    assert t.completion_logprobs([MSGS], completion)[0] == pytest.approx(ref, abs=1e-4)
    assert abs(lp_a - ref) > 1e-3 and abs(lp_b - ref) > 1e-3 and abs(lp_a - lp_b) > 1e-3
    t.set_adapter("cohort-a")
    out = t.chat([MSGS, USER_ONLY, MSGS], temperature=0.0, max_new_tokens=8)
    assert len(out) == 3 and out[0] == out[2]
    s1 = t.chat([USER_ONLY] * 2, temperature=1.0, max_new_tokens=8, seed=9)
    assert s1 == t.chat([USER_ONLY] * 2, temperature=1.0, max_new_tokens=8, seed=9)
    with pytest.raises(ConfigError, match="no adapter named"):
        t.set_adapter("cohort-z")


def test_torch_teacher_stop_strings(torch_teacher) -> None:
    torch_teacher.set_adapter(None)
    full = torch_teacher.chat([USER_ONLY], temperature=0.0, max_new_tokens=16)[0]
    word = full.split()[1]
    cut = torch_teacher.chat([USER_ONLY], temperature=0.0, max_new_tokens=16, stop=[word])[0]
    assert cut == full[:full.index(word)]
