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
    from arte.home import convert_dir

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
    from arte.home import convert_dir

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


def _constrained_elicitation(teacher, data_dir) -> None:
    """Constrained elicitation on the six-option date sample: every question carries a well-formed options
    line and every rationale ends in <ans> one of its options, whatever the model prefers to write."""
    import re

    from arte.elicit import ElicitConfig, elicit_drafts
    from arte.questions import parse_options
    from arte.tasks import load_task, split_task

    task = load_task(data_dir / "bigbench_sample" / "date_understanding.json")
    seeds = split_task(task, seed=0, n_seeds=3, validation=0).seeds
    cfg = ElicitConfig(n_questions=4, questions_per_prompt=2, batch_size=2, max_question_prompts=2,
                       styles=("plain",), question_max_new_tokens=200, rationale_max_new_tokens=64)
    res = elicit_drafts(teacher, task, seeds, cfg)
    # What a format cannot say may still reject a question: a duplicate, or an option listed twice.
    assert set(res.question_rejections) <= {"duplicate", "duplicate_of_seed", "bad_options"}
    assert res.questions, res.question_rejections
    for q in res.questions:
        opts = parse_options(q.text)
        assert opts and 5 <= len(opts) <= 6 and all(re.fullmatch(r"\d\d/\d\d/\d{4}", o) for o in opts)
    assert res.draft_rejections == {} and len(res.drafts) == len(res.questions)
    for d in res.drafts:
        assert d.answer in parse_options(d.question) and d.rationale.endswith(f"<ans>{d.answer}</ans>")
    c = res.stats["constraint"]
    assert c["questions"]["generations"] == res.stats["question_prompts"] == 2
    assert c["rationales"]["generations"] == len(res.questions) and c["rationales"].get("incomplete", 0) == 0


def test_llama_teacher_constrained_elicitation(llama_teacher, data_dir) -> None:
    _constrained_elicitation(llama_teacher, data_dir)


def test_torch_teacher_constrained_elicitation(torch_teacher, data_dir) -> None:
    torch_teacher.set_adapter(None)
    _constrained_elicitation(torch_teacher, data_dir)
