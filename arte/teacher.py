"""The teacher protocol: chat messages in, texts out, whatever runs the model.

Contract: a :class:`Teacher` answers a batch of conversations (each a list of ``{"role", "content"}``
messages, roles ``system``/``user``/``assistant``) with one text each, in order. Sampling is greedy at
``temperature`` 0, otherwise softmax(logits / T) restricted to the ``top_p`` mass; ``seed`` makes a call
reproducible for a given backend, batch and batch order (conversation ``i`` of a call samples with a
stream derived from ``(seed, i)``). A reply ends at the end-of-turn token, before the first ``stop``
string (the stop string is not included: OpenAI semantics), or after ``max_new_tokens``. A conversation
that ends with an assistant message is *continued*: the reply is the continuation of that message (its
prefix is not repeated), the way answer extraction prefills ``… <ans>``. ``name``
identifies the base model and ``adapter`` the adapter in use (None: the base model); both go into draft
and dataset provenance.

Constrained decoding: ``formats[i]`` (an :class:`arte.grammar.Format`, or None) is the format reply ``i``
must have (:mod:`arte.formats` builds the draft formats). Local backends keep each token inside it
(:class:`arte.constrain.TokenGuard`) and add what the constraint did to ``counts``
(:data:`arte.constrain.COUNT_KEYS`); an OpenAI-compatible endpoint is sent the format as its structured
output (a regex or a GBNF grammar) and counts only ``generations``. Callers that do not constrain pass
neither argument.

Backends (each imports its runtime lazily):

* :class:`arte.backends.hf_teacher.TorchTeacher` — transformers (the GGUF dequantized, or an HF dir);
  PEFT LoRA adapters loaded by name on one base; log-probabilities of completions.
* :class:`arte.backends.llama_teacher.LlamaCppTeacher` — llama.cpp, parallel decoding; the GGUF's own
  chat template rendered here with jinja2; optionally one GGUF LoRA adapter.
* :class:`arte.backends.openai.OpenAITeacher` — any OpenAI-compatible ``/v1/chat/completions`` endpoint
  (vLLM, llama-server) over httpx, with timeouts and retries.

This module also holds what the backends share: message validation and chat-template rendering.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from arte.errors import ConfigError

if TYPE_CHECKING:   # only for annotations: the protocol does not need the format language at run time
    from arte.grammar import Format

__all__ = ["Message", "Teacher", "ROLES", "check_conversations", "check_sampling", "render_chat",
           "teacher_id"]

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


@runtime_checkable
class Teacher(Protocol):
    """A chat model that writes drafts and tailored data. Call ``close`` to free native resources."""

    name: str

    @property
    def adapter(self) -> str | None:
        """The adapter in use (a name or path), or None for the base model."""

    def chat(self, conversations: Sequence[Sequence[Message]], *, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, stop: Sequence[str] = (), top_p: float = 1.0,
             formats: Sequence[Format | None] | None = None,
             counts: dict[str, int] | None = None) -> list[str]:
        """One reply per conversation, in order (see the module docstring for sampling, stops and
        formats)."""

    def close(self) -> None:
        """Free the runtime's resources (idempotent)."""


def teacher_id(teacher: Teacher) -> dict[str, Any]:
    """What provenance records about a teacher: its name and adapter."""
    return {"teacher": teacher.name, "adapter": teacher.adapter}


def check_conversations(conversations: Sequence[Sequence[Message]]) -> list[list[Message]]:
    """Validate a batch of conversations; returns plain lists of ``{"role", "content"}`` dicts.

    Raises :class:`ConfigError` naming ``conversations[i][j].field`` and the problem.
    """
    if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence):
        raise ConfigError("conversations", "expected a list of conversations (lists of messages)")
    out: list[list[Message]] = []
    for i, conv in enumerate(conversations):
        if isinstance(conv, (str, bytes, dict)) or not isinstance(conv, Sequence) or not conv:
            raise ConfigError(f"conversations[{i}]", "expected a non-empty list of messages")
        msgs: list[Message] = []
        for j, m in enumerate(conv):
            where = f"conversations[{i}][{j}]"
            if not isinstance(m, dict):
                raise ConfigError(where, f"expected an object with role and content, got {type(m).__name__}")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise ConfigError(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
            if not isinstance(content, str):
                raise ConfigError(f"{where}.content", f"expected a string, got {type(content).__name__}")
            msgs.append({"role": role, "content": content})
        if all(m["role"] != "user" for m in msgs):
            raise ConfigError(f"conversations[{i}]", "has no user message")
        if msgs[-1]["role"] == "assistant" and (not msgs[-1]["content"] or msgs[-1]["content"][-1].isspace()):
            raise ConfigError(f"conversations[{i}][{len(msgs) - 1}].content",
                              "a final assistant message (continued by the reply) must not be empty or end in "
                              "whitespace")
        out.append(msgs)
    return out


def check_sampling(temperature: float, max_new_tokens: int, top_p: float) -> None:
    """Validate sampling arguments, naming the offending one."""
    if not (temperature >= 0.0) or temperature > 10.0:
        raise ConfigError("temperature", f"must be in [0, 10], got {temperature}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError("max_new_tokens", f"must be an integer >= 1, got {max_new_tokens!r}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError("top_p", f"must be in (0, 1], got {top_p}")


def _raise(message: str) -> None:
    raise ConfigError("chat_template", message)


def render_chat(template: str, messages: Sequence[Message], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with a Hugging Face style jinja2 chat template (as stored in a GGUF's
    ``tokenizer.chat_template`` or a ``tokenizer_config.json``).

    When the last message is the assistant's, the text ends right after its content (the template's
    end-of-turn marker is cut, no generation prompt is added), so a model continues that message: the
    rule of transformers' ``continue_final_message``.

    The template runs in jinja2's immutable sandbox with the variables and helpers HF templates expect
    (``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception``,
    ``strftime_now``, the ``tojson`` filter, loop controls). A template that fails raises
    :class:`ConfigError` on the field ``chat_template``.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    continue_final = bool(messages) and messages[-1]["role"] == "assistant"
    try:
        compiled = env.from_string(template)
        text = compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt and not
                               continue_final, bos_token=bos_token, eos_token=eos_token)
    except jinja2.TemplateError as e:
        raise ConfigError("chat_template", f"the chat template failed: {e}") from e
    if continue_final:
        final = messages[-1]["content"].strip()
        at = text.rfind(final)
        if not final or at < 0:
            raise ConfigError("chat_template", "the final assistant message does not appear in the rendered "
                                               "chat, so it cannot be continued")
        text = text[:at + len(final)]
    return text
