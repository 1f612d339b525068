"""The OpenAI-compatible teacher against a real HTTP server on loopback (stdlib http.server in a thread)."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

from arte.backends.openai import OpenAITeacher
from arte.elicit import ElicitConfig, elicit_drafts
from arte.errors import TeacherHTTPError
from arte.tasks import Example, Task
from tests.support.teacher_fakes import ChatServer, serve_chat


@pytest.fixture()
def server() -> Iterator[ChatServer]:
    with serve_chat() as srv:
        yield srv



def test_chat_over_real_http_with_concurrency(server: ChatServer) -> None:
    with OpenAITeacher(server.url, "tiny", concurrency=3, sleep=lambda s: None) as t:
        convs = [[{"role": "user", "content": f"question {i}"}] for i in range(7)]
        assert t.chat(convs, seed=5) == [f"echo: question {i}" for i in range(7)]
    assert sorted(r["body"]["seed"] for r in server.requests) == list(range(5, 12))


def test_retries_a_warming_up_server(server: ChatServer) -> None:
    server.fail_first = 2
    waits: list[float] = []
    with OpenAITeacher(server.url, "tiny", concurrency=1, sleep=waits.append, random=lambda: 0.5) as t:
        assert t.chat([[{"role": "user", "content": "hi"}]]) == ["echo: hi"]
    assert len(server.requests) == 3 and waits == [0.25, 0.5]


def test_wrong_path_is_reported_with_status(server: ChatServer) -> None:
    with OpenAITeacher(server.url + "/api", "tiny", sleep=lambda s: None) as t:
        with pytest.raises(TeacherHTTPError) as e:
            t.chat([[{"role": "user", "content": "hi"}]])
    assert e.value.status == 404 and "/api/v1/chat/completions" in str(e.value)


def test_connection_refused_names_the_endpoint() -> None:
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    with OpenAITeacher(f"http://127.0.0.1:{port}", "tiny", max_retries=2, sleep=waits.append, timeout=2) as t:
        with pytest.raises(TeacherHTTPError) as e:
            t.chat([[{"role": "user", "content": "hi"}]])
    assert e.value.status is None and f"127.0.0.1:{port}" in str(e.value) and len(waits) == 2


def test_elicitation_through_a_remote_teacher(server: ChatServer) -> None:
    def reply(body: dict) -> str:
        text = body["messages"][-1]["content"]
        if "example questions" in text:
            return f"Question 1: How many legs do {body['seed']} spiders have?\nQuestion 2: What is {body['seed']} + 1?"
        return "Count them. <ans>8</ans>"

    server.reply = reply
    task = Task("counting", "Answer with a number.", (Example("s0", "How many wheels has a bike?", ("2",)),))
    with OpenAITeacher(server.url, "tiny", sleep=lambda s: None) as t:
        res = elicit_drafts(t, task, task.examples, ElicitConfig(n_questions=4, styles=("plain",), batch_size=2))
    assert len(res.questions) == 4 and len(res.drafts) == 4
    assert {d.answer for d in res.drafts} == {"8"}
    assert res.drafts[0].provenance["teacher"] == "tiny"
