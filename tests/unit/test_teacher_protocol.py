"""The Teacher protocol's shared parts: message validation, sampling checks, chat-template rendering."""

from __future__ import annotations

import jinja2
import pytest

from arte.errors import ConfigError
from arte.teacher import Teacher, check_conversations, check_sampling, render_chat, teacher_id
from tests.support.teacher_fakes import ScriptedTeacher

# The shape of SmolLM2's template (ChatML with a default system prompt), as HF templates are written.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nDefault system<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_chatml_rendering_adds_default_system_and_generation_prompt() -> None:
    text = render_chat(CHATML, [{"role": "user", "content": "Hi?"}])
    assert text == ("<|im_start|>system\nDefault system<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    text = render_chat(CHATML, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                       add_generation_prompt=False)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"


def test_a_final_assistant_message_is_continued() -> None:
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Because. <ans>"}]
    assert check_conversations([msgs]) == [msgs]
    text = render_chat(CHATML, msgs)
    assert text.endswith("<|im_start|>assistant\nBecause. <ans>")      # no end-of-turn, no generation prompt


def test_template_helpers_bos_and_raise_exception() -> None:
    tpl = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}" \
          "{% endif %}[{{ m['content'] | tojson }}]{% endfor %}"
    assert render_chat(tpl, [{"role": "user", "content": 'say "hi"'}], bos_token="<s>") == '<s>["say \\"hi\\""]'
    with pytest.raises(ConfigError) as e:
        render_chat(tpl, [{"role": "system", "content": "x"}])
    assert e.value.field == "chat_template" and "no system" in str(e.value)


def test_broken_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="chat_template"):
        render_chat("{% for m in messages %}", [{"role": "user", "content": "x"}])


def test_sandbox_blocks_attribute_escapes() -> None:
    with pytest.raises(ConfigError, match="chat_template.*unsafe") as e:
        render_chat("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}])
    assert isinstance(e.value.__cause__, jinja2.exceptions.SecurityError)


@pytest.mark.parametrize("convs, field", [
    ("hello", "conversations"),
    ([[]], "conversations[0]"),
    (["hello"], "conversations[0]"),
    ([[{"role": "robot", "content": "x"}]], "conversations[0][0].role"),
    ([[{"role": "user", "content": 3}]], "conversations[0][0].content"),
    ([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}, {"role": "assistant", "content": "c "}]],
     "conversations[1][1].content"),
    ([[{"role": "system", "content": "a"}]], "conversations[0]"),
    ([[["user", "x"]]], "conversations[0][0]"),
])
def test_bad_conversations_name_the_field(convs, field) -> None:
    with pytest.raises(ConfigError) as e:
        check_conversations(convs)
    assert e.value.field == field


def test_good_conversations_are_copied_plainly() -> None:
    msgs = [{"role": "system", "content": "s", "extra": 1}, {"role": "user", "content": "u"}]
    assert check_conversations([msgs]) == [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]


@pytest.mark.parametrize("kw, field", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": True}, "max_new_tokens"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
])
def test_bad_sampling_names_the_argument(kw, field) -> None:
    args = {"temperature": 0.0, "max_new_tokens": 8, "top_p": 1.0, **kw}
    with pytest.raises(ConfigError) as e:
        check_sampling(**args)
    assert e.value.field == field


def test_scripted_fake_satisfies_the_protocol() -> None:
    t = ScriptedTeacher(lambda m, kw, i: f"{i}:{m[-1]['content']}", adapter="cohort-a")
    assert isinstance(t, Teacher)
    assert t.chat([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]) == ["0:a", "1:b"]
    assert teacher_id(t) == {"teacher": "scripted", "adapter": "cohort-a"}


def test_teacher_side_modules_import_light() -> None:
    import subprocess
    import sys

    code = ("import arte.teacher, arte.elicit, arte.questions, arte.pairs, arte.dpo, arte.tailor, arte.pipeline, "
            "arte.backends.openai, arte.backends.llama_teacher, arte.backends.hf_teacher, arte_cli.teacher\n"
            "import sys\nprint([m for m in ('torch', 'transformers', 'llama_cpp', 'trl', 'peft', 'datasets', "
            "'httpx', 'jinja2') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
