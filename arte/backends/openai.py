"""A teacher behind any OpenAI-compatible chat endpoint (vLLM, llama-server, ...), over httpx.

Contract: implements :class:`arte.teacher.Teacher`. Each conversation is one ``POST
{base_url}/v1/chat/completions`` with ``model`` (the adapter's name when one is set: vLLM serves LoRA
adapters as models), ``messages``, ``temperature``, ``top_p``, ``max_tokens``, ``seed`` (``seed + i`` for
conversation ``i``) and ``stop``; the reply is ``choices[0].message.content``. A conversation ending in an
assistant message is sent with vLLM's ``continue_final_message: true, add_generation_prompt: false``
(llama-server continues a final assistant message on its own). Up to ``concurrency``
requests are in flight at once (threads; the endpoint batches them); results keep the input order.

Constrained decoding uses the endpoint's structured output, chosen by ``structured_output``
(:data:`STRUCTURED_OUTPUTS`): a conversation with a format is sent with

* ``vllm`` (default): ``"structured_outputs": {"regex": format.regex()}`` (vLLM >= 0.10.2; the only
  spelling from 0.12);
* ``vllm-guided``: ``"guided_regex": format.regex()`` (older vLLM);
* ``llama-server``: ``"grammar": format.gbnf()`` (llama.cpp's server, GBNF);
* ``none``: nothing (the endpoint decodes freely; replies are parsed and repaired as before).

The endpoint cannot be made to finish early (:mod:`arte.constrain`'s finishing is local): a reply the
token budget cuts is rejected downstream. ``counts["generations"]`` counts constrained requests.

Failures: connection errors, timeouts, HTTP 408/409/429 and 5xx are retried up to ``max_retries`` times
with exponential backoff and full jitter (:mod:`arte.retry`: ``backoff * 2**attempt``, capped at ``max_backoff``, times a
uniform draw); a ``Retry-After`` header in seconds is a lower bound (up to ``max_backoff``). Other 4xx and malformed
bodies fail at once. Every failure is a :class:`arte.errors.TeacherHTTPError` naming the endpoint URL
and the HTTP status. ``sleep`` and ``random`` are injectable so tests never wait. This is the one module
of ``arte`` that talks to the network, by design.
"""

from __future__ import annotations

import logging
import random as _random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from arte.constrain import add_counts, check_formats
from arte.errors import ConfigError, TeacherHTTPError
from arte.grammar import Format
from arte.retry import Retryable, RetryPolicy, problem, retry_after_seconds, retry_call
from arte.student import Closes
from arte.teacher import Message, check_conversations, check_sampling

__all__ = ["OpenAITeacher", "RETRY_STATUSES", "STRUCTURED_OUTPUTS"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

# How a format is sent (see the module docstring); the first is the default.
STRUCTURED_OUTPUTS = ("vllm", "vllm-guided", "llama-server", "none")


def _structured(mode: str, fmt: Format) -> dict[str, Any]:
    if mode == "vllm":
        return {"structured_outputs": {"regex": fmt.regex()}}
    if mode == "vllm-guided":
        return {"guided_regex": fmt.regex()}
    if mode == "llama-server":
        return {"grammar": fmt.gbnf()}
    return {}


class OpenAITeacher(Closes):
    """A remote teacher on an OpenAI-compatible endpoint.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
        model: the served model name.
        adapter: a served LoRA adapter name to use instead of ``model`` (None: the base model).
        api_key: sent as ``Authorization: Bearer``; None sends no header.
        timeout: seconds per request (connect, read, write and pool).
        max_retries: retries after the first attempt for retryable failures.
        backoff, max_backoff: the exponential backoff base and cap, in seconds.
        concurrency: requests in flight at once.
        structured_output: how formats are sent, one of :data:`STRUCTURED_OUTPUTS`.
        transport: an httpx transport (``httpx.MockTransport`` in tests).
        sleep, random: injectable wait and uniform [0, 1) draw for the backoff.
    """

    def __init__(self, base_url: str, model: str, *, adapter: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 30.0,
                 concurrency: int = 8, structured_output: str = STRUCTURED_OUTPUTS[0], transport: Any = None,
                 sleep: Callable[[float], None] = time.sleep, random: Callable[[], float] = _random.random) -> None:
        import httpx

        if structured_output not in STRUCTURED_OUTPUTS:
            raise ConfigError("structured_output", f"must be one of {', '.join(STRUCTURED_OUTPUTS)}, got "
                                                   f"{structured_output!r}")

        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ConfigError("model", "must name the served model")
        if timeout <= 0:
            raise ConfigError("timeout", f"must be > 0, got {timeout}")
        if max_retries < 0:
            raise ConfigError("max_retries", f"must be >= 0, got {max_retries}")
        if backoff < 0 or max_backoff < backoff:
            raise ConfigError("backoff", f"need 0 <= backoff <= max_backoff, got {backoff} and {max_backoff}")
        if concurrency < 1:
            raise ConfigError("concurrency", f"must be >= 1, got {concurrency}")
        root = base_url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        self.url = f"{root}/v1/chat/completions"
        self.name = model
        self._adapter = adapter
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self.structured_output = structured_output
        self._sleep = sleep
        self._rng = _Draws(random)
        self._retry = RetryPolicy(attempts=max_retries + 1, base_delay=backoff, max_delay=max_backoff)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._httpx = httpx
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers, transport=transport)

    @property
    def adapter(self) -> str | None:
        return self._adapter

    def close(self) -> None:
        self._client.close()

    def chat(self, conversations: Sequence[Sequence[Message]], *, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, stop: Sequence[str] = (), top_p: float = 1.0,
             formats: Sequence[Format | None] | None = None,
             counts: dict[str, int] | None = None) -> list[str]:
        convs = check_conversations(conversations)
        check_sampling(temperature, max_new_tokens, top_p)
        fmts = check_formats(formats, len(convs))
        bodies = []
        for i, (msgs, fmt) in enumerate(zip(convs, fmts)):
            body: dict[str, Any] = {"model": self._adapter or self.name, "messages": msgs,
                                    "temperature": temperature, "top_p": top_p,
                                    "max_tokens": max_new_tokens, "seed": seed + i, "n": 1}
            if stop:
                body["stop"] = list(stop)
            if msgs[-1]["role"] == "assistant":   # continue it (vLLM's parameters; llama-server does it anyway)
                body.update(continue_final_message=True, add_generation_prompt=False)
            if fmt is not None and self.structured_output != "none":
                body.update(_structured(self.structured_output, fmt))
                if counts is not None:
                    add_counts(counts, {"generations": 1})
            bodies.append(body)
        if self.concurrency == 1 or len(bodies) == 1:
            return [self._post(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            return list(pool.map(self._post, bodies))

    def _post(self, body: dict[str, Any]) -> str:
        httpx = self._httpx

        def attempt() -> str:
            try:
                resp = self._client.post(self.url, json=body)
            except httpx.TimeoutException as e:
                raise Retryable(f"timed out ({type(e).__name__})") from e
            except httpx.TransportError as e:
                raise Retryable(f"could not connect: {e}") from e
            if resp.status_code in RETRY_STATUSES:
                raise _StatusError(resp)
            if resp.status_code >= 400:
                raise TeacherHTTPError(self.url, _error_text(resp), status=resp.status_code, attempts=1)
            return _content(self.url, resp)

        def give_up(e: BaseException, attempts: int) -> TeacherHTTPError:
            if isinstance(e, _StatusError):
                return TeacherHTTPError(self.url, e.text, status=e.status, attempts=attempts)
            return TeacherHTTPError(self.url, problem(e), attempts=attempts)

        return retry_call(attempt, self._retry, what=self.url, retry_on=(), give_up=give_up, wait=self._sleep,
                          rng=self._rng)


class _StatusError(Retryable):
    """A retryable HTTP status; its error text is what the last attempt reports."""

    def __init__(self, resp: Any) -> None:
        self.status = resp.status_code
        self.text = _error_text(resp)
        super().__init__(f"HTTP {resp.status_code}", retry_after_seconds(resp.headers.get("retry-after")))


class _Draws:
    """``random.Random``'s ``uniform`` over an injected uniform [0, 1) draw (tests fix the jitter)."""

    def __init__(self, draw: Callable[[], float]) -> None:
        self.draw = draw

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.draw()


def _error_text(resp: Any) -> str:
    """The server's error message when it sent the OpenAI error shape, else the start of the body."""
    try:
        data = resp.json()
        msg = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error")
        if msg:
            return str(msg)[:500]
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    return (resp.text or resp.reason_phrase or "error")[:500]


def _content(url: str, resp: Any) -> str:
    try:
        data = resp.json()
    except ValueError:
        raise TeacherHTTPError(url, f"the response is not JSON: {resp.text[:200]!r}", status=resp.status_code)
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TeacherHTTPError(url, "the response has no choices[0].message.content",
                               status=resp.status_code) from None
    if content is None:   # some servers send null content for an empty reply
        return ""
    if not isinstance(content, str):
        raise TeacherHTTPError(url, f"choices[0].message.content is a {type(content).__name__}, not a string",
                               status=resp.status_code)
    return content
