"""The OpenAI-compatible teacher against httpx.MockTransport: requests, retries, backoff, errors."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from arte.backends.openai import OpenAITeacher
from arte.errors import ConfigError, TeacherHTTPError

URL = "http://teacher.test:8000"
ENDPOINT = f"{URL}/v1/chat/completions"
USER = [{"role": "user", "content": "Write a question."}]


def completion(text: str | None) -> dict:
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def make(handler, **kw) -> tuple[OpenAITeacher, list[float]]:
    sleeps: list[float] = []
    t = OpenAITeacher(URL, "big-teacher", transport=httpx.MockTransport(handler), sleep=sleeps.append,
                      random=lambda: 1.0, **kw)
    return t, sleeps


def test_request_body_and_reply_order() -> None:
    seen: list[dict] = []
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with lock:
            seen.append({"body": body, "auth": request.headers.get("authorization"), "url": str(request.url)})
        return httpx.Response(200, json=completion("reply to " + body["messages"][-1]["content"]))

    t, _ = make(handler, api_key="sk-test", concurrency=4)
    convs = [[{"role": "system", "content": "S"}, {"role": "user", "content": f"q{i}"}] for i in range(6)]
    out = t.chat(convs, temperature=0.7, max_new_tokens=33, seed=100, stop=["</ans>"], top_p=0.9)
    assert out == [f"reply to q{i}" for i in range(6)]
    assert {s["url"] for s in seen} == {ENDPOINT}
    assert {s["auth"] for s in seen} == {"Bearer sk-test"}
    bodies = sorted((s["body"] for s in seen), key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == list(range(100, 106))
    b = bodies[0]
    assert b["model"] == "big-teacher" and b["temperature"] == 0.7 and b["top_p"] == 0.9
    assert b["max_tokens"] == 33 and b["stop"] == ["</ans>"] and b["n"] == 1
    assert b["messages"] == convs[0]


def test_adapter_is_sent_as_the_model_and_v1_suffix_is_accepted() -> None:
    models = []

    def handler(request: httpx.Request) -> httpx.Response:
        models.append((str(request.url), json.loads(request.content)["model"]))
        return httpx.Response(200, json=completion("ok"))

    t = OpenAITeacher(URL + "/v1/", "base", adapter="cohort-7", transport=httpx.MockTransport(handler))
    assert t.chat([USER]) == ["ok"] and t.adapter == "cohort-7" and t.name == "base"
    assert models == [(ENDPOINT, "cohort-7")]


def test_no_stop_key_without_stop_and_null_content_is_empty() -> None:
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=completion(None))

    t, _ = make(handler)
    assert t.chat([USER]) == [""]
    assert "stop" not in bodies[0]


def test_retries_with_exponential_backoff_then_succeeds() -> None:
    statuses = iter([503, 500, 429, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        s = next(statuses)
        return httpx.Response(s, json=completion("finally") if s == 200 else {"error": {"message": "busy"}})

    t, sleeps = make(handler, backoff=0.5, max_backoff=1.5)
    assert t.chat([USER]) == ["finally"]
    assert sleeps == [0.5, 1.0, 1.5]   # 0.5·2^k capped at 1.5, times the jitter draw (1.0 here)


def test_jitter_scales_the_delay_and_retry_after_is_a_floor() -> None:
    statuses = iter([(429, {"Retry-After": "7"}), (503, {}), (200, {})])

    def handler(request: httpx.Request) -> httpx.Response:
        s, headers = next(statuses)
        return httpx.Response(s, headers=headers, json=completion("ok"))

    sleeps: list[float] = []
    t = OpenAITeacher(URL, "m", transport=httpx.MockTransport(handler), sleep=sleeps.append,
                      random=lambda: 0.25, backoff=2.0)
    assert t.chat([USER]) == ["ok"]
    assert sleeps == [7.0, 1.0]   # max(2·0.25, Retry-After 7), then 2·2·0.25


def test_gives_up_after_max_retries_naming_url_and_status() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, json={"error": {"message": "model is loading"}})

    t, sleeps = make(handler, max_retries=2)
    with pytest.raises(TeacherHTTPError) as e:
        t.chat([USER])
    assert len(calls) == 3 and len(sleeps) == 2
    assert e.value.status == 503 and e.value.url == ENDPOINT and e.value.attempts == 3
    assert ENDPOINT in str(e.value) and "HTTP 503" in str(e.value) and "model is loading" in str(e.value)


def test_client_errors_are_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, text="max_tokens is too large")

    t, sleeps = make(handler)
    with pytest.raises(TeacherHTTPError) as e:
        t.chat([USER])
    assert len(calls) == 1 and sleeps == []
    assert e.value.status == 400 and "max_tokens is too large" in str(e.value)


def test_timeouts_and_connection_errors_are_retried_then_reported() -> None:
    events = iter([httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), None])

    def handler(request: httpx.Request) -> httpx.Response:
        ev = next(events)
        if ev is not None:
            raise ev
        return httpx.Response(200, json=completion("ok"))

    t, sleeps = make(handler)
    assert t.chat([USER]) == ["ok"] and len(sleeps) == 2

    def always_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    t, _ = make(always_timeout, max_retries=1)
    with pytest.raises(TeacherHTTPError) as e:
        t.chat([USER])
    assert e.value.status is None and "timed out" in str(e.value) and ENDPOINT in str(e.value)


@pytest.mark.parametrize("body", [b"not json", b'{"choices": []}', b'{"choices": [{"message": {"content": 5}}]}'])
def test_malformed_responses_fail_clearly(body: bytes) -> None:
    t, sleeps = make(lambda r: httpx.Response(200, content=body))
    with pytest.raises(TeacherHTTPError) as e:
        t.chat([USER])
    assert e.value.status == 200 and ENDPOINT in str(e.value) and sleeps == []


@pytest.mark.parametrize("kw, field", [({"base_url": "teacher:8000"}, "base_url"), ({"model": ""}, "model"),
                                       ({"timeout": 0}, "timeout"), ({"max_retries": -1}, "max_retries"),
                                       ({"concurrency": 0}, "concurrency"), ({"backoff": 5, "max_backoff": 1}, "backoff")])
def test_bad_settings_name_the_field(kw, field) -> None:
    args = {"base_url": URL, "model": "m", **kw}
    with pytest.raises(ConfigError) as e:
        OpenAITeacher(args.pop("base_url"), args.pop("model"), **args)
    assert e.value.field == field


def test_bad_messages_never_reach_the_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not be called
        raise AssertionError("sent")

    t, _ = make(handler)
    with pytest.raises(ConfigError):
        t.chat([[{"role": "user", "content": None}]])


@pytest.mark.parametrize("mode", ["vllm", "vllm-guided", "llama-server", "none"])
def test_formats_are_sent_as_the_chosen_structured_output(mode) -> None:
    from arte.formats import rationale_format

    fmt = rationale_format(["plausible", "implausible"])
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=completion("Fits. <ans>plausible</ans>"))

    t, _ = make(handler, structured_output=mode, concurrency=1)
    counts: dict[str, int] = {}
    out = t.chat([USER, USER], formats=[fmt, None], counts=counts)
    assert out == ["Fits. <ans>plausible</ans>"] * 2
    constrained, free = bodies
    expected = {"vllm": {"structured_outputs": {"regex": fmt.regex()}}, "vllm-guided": {"guided_regex": fmt.regex()},
                "llama-server": {"grammar": fmt.gbnf()}, "none": {}}[mode]
    keys = {"structured_outputs", "guided_regex", "grammar"}
    assert {k: v for k, v in constrained.items() if k in keys} == expected
    assert not keys & set(free)                                   # an unconstrained conversation sends none
    assert counts == ({} if mode == "none" else {"generations": 1})
    assert t.structured_output == mode


def test_structured_output_mode_and_formats_are_checked() -> None:
    with pytest.raises(ConfigError) as e:
        make(lambda r: httpx.Response(200), structured_output="outlines")
    assert e.value.field == "structured_output"
    t, _ = make(lambda r: httpx.Response(200, json=completion("x")))
    with pytest.raises(ConfigError, match="formats"):
        t.chat([USER], formats=[None, None])
