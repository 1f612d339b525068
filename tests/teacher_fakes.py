"""A scripted teacher for unit tests: replies come from a function of the conversation, every call is
recorded. It implements :class:`arte.teacher.Teacher` and validates its input like the real backends."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Sequence

from arte.constrain import check_formats
from arte.grammar import Format
from arte.teacher import Message, check_conversations, check_sampling


class ScriptedTeacher:
    """``reply(messages, call_kwargs, index_in_call)`` gives each reply."""

    def __init__(self, reply: Callable[[list[Message], dict[str, Any], int], str], *, name: str = "scripted",
                 adapter: str | None = None) -> None:
        self.reply = reply
        self.name = name
        self._adapter = adapter
        self.calls: list[dict[str, Any]] = []
        self.closed = False

    @property
    def adapter(self) -> str | None:
        return self._adapter

    def chat(self, conversations: Sequence[Sequence[Message]], *, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, stop: Sequence[str] = (), top_p: float = 1.0,
             formats: Sequence[Format | None] | None = None, counts: dict[str, int] | None = None) -> list[str]:
        """Scripted replies; ``formats`` are recorded, not enforced (like an endpoint without structured
        output): what parsing does with free text stays testable."""
        convs = check_conversations(conversations)
        check_sampling(temperature, max_new_tokens, top_p)
        kw = {"temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed, "stop": tuple(stop),
              "top_p": top_p}
        self.calls.append({"conversations": convs, **kw, "formats": check_formats(formats, len(convs))})
        return [self.reply(c, kw, i) for i, c in enumerate(convs)]

    def close(self) -> None:
        self.closed = True


def is_question_prompt(messages: list[Message]) -> bool:
    return "example questions of one task" in messages[-1]["content"]


def asked_question(messages: list[Message]) -> str:
    """The question inside a rationale prompt."""
    text = messages[-1]["content"]
    start = text.index("Question: ") + len("Question: ")
    return text[start:text.index("\n\nGive your reasoning")]


class LastAnswerCopyingStudent:
    """Like ``tests.fakes.CopyingStudent`` (bytes as tokens; the "model" answers what the demonstration
    answered), but it copies the *last* complete ``<ans>…</ans>`` of the prompt: the scoring header itself
    contains ``<ans> and </ans>``, which the first-match fake would copy for every draft."""

    name = "last-answer-copying-fake"
    n_ctx = 1 << 20

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        return ([256] if bos else []) + list(text.encode("utf-8"))

    @staticmethod
    def _demo(tokens) -> str:
        import re

        text = bytes(t for t in tokens if t < 256).decode("utf-8")
        found = re.findall(r"<ans>(.*?)</ans>", text, re.DOTALL)
        return found[-1].strip() if found else ""

    def loglik(self, prompt, continuations):
        from arte.student import Continuation

        demo = self._demo(prompt)
        out = []
        for c in continuations:
            text = bytes(c).decode("utf-8")
            per_byte = -0.1 if text == f"{demo}</ans>" else -2.0
            out.append(Continuation(per_byte * len(c), len(c), per_byte > -1))
        return out

    def loglik_batch(self, requests):
        return [self.loglik(p, c) for p, c in requests]

    def generate(self, prompts, *, max_new_tokens, stop=(), temperature=0.0, seed=0):  # pragma: no cover
        raise NotImplementedError("loglik mode only")

    def reason_loglik(self, prompts, continuations, *, cue, max_new_tokens, stop=()):
        """It writes no reasoning: the options after the cue are scored as in ``loglik`` (label copying)."""
        from arte.student import Generation, Reasoned

        return [Reasoned(Generation("", cue, 0), tuple(self.loglik(p, c))) for p, c in zip(prompts, continuations)]

    def close(self) -> None:
        pass


class _ChatHandler(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions: fails the first ``fail_first`` requests with 503, then echoes."""

    server: "ChatServer"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "body": body})
            n = len(self.server.requests)
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
        elif n <= self.server.fail_first:
            self._send(503, {"error": {"message": "warming up"}})
        else:
            self._send(200, {"choices": [{"message": {"role": "assistant",
                                                      "content": self.server.reply(body)}}]})

    def _send(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.fail_first = 0
        self.reply = lambda body: "echo: " + body["messages"][-1]["content"][:20]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serve(srv: ThreadingHTTPServer) -> Iterator[Any]:
    """Run ``srv`` in a thread until the block ends, then stop and close it."""
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


def serve_chat() -> contextlib.AbstractContextManager[ChatServer]:
    """A real OpenAI-style chat server on a free loopback port, stopped on exit; ``srv.url`` is its root."""
    return serve(ChatServer())


class FakeLMTeacher:
    """A fake *model* teacher for constrained decoding: a byte-level vocabulary (256 byte tokens, a few
    word tokens, an end token) and logits that prefer ``prefer(messages, text_so_far)`` (a string to
    continue with, or None for the end), plus small deterministic noise so every token has a rank.
    Decoding samples token by token and, for a conversation with a format, passes each token through
    :class:`arte.constrain.TokenGuard` exactly as the real local backends do. Its preferences are written
    to break the draft formats, so only the constraint can make its replies parse."""

    WORDS = ("Question", " plausible", "<ans>", "</ans>", "Options: ", "\n\n")

    def __init__(self, prefer: Callable[[list[Message], str], str | None], *, name: str = "fake-lm") -> None:
        from arte.constrain import Vocabulary

        self.prefer = prefer
        self.name = name
        pieces = [bytes([b]) for b in range(256)] + [w.encode() for w in self.WORDS] + [b""]
        self.eos = len(pieces) - 1
        self.vocab = Vocabulary(pieces, frozenset({self.eos}), self.eos)
        self.calls: list[dict[str, Any]] = []

    @property
    def adapter(self) -> str | None:
        return None

    def _logits(self, messages: list[Message], text: str, noise: Any) -> Any:
        import numpy as np

        x = noise.normal(0.0, 1.0, len(self.vocab.pieces))
        want = self.prefer(messages, text)
        if want is None:
            x[self.eos] += 20.0
            return x
        data = want.encode()
        best = max((t for t, p in enumerate(self.vocab.pieces) if p and data.startswith(p)),
                   key=lambda t: len(self.vocab.pieces[t]), default=None)
        if best is not None:
            x[best] += 20.0
        return np.asarray(x)

    def chat(self, conversations: Sequence[Sequence[Message]], *, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, stop: Sequence[str] = (), top_p: float = 1.0,
             formats: Sequence[Any] | None = None, counts: dict[str, int] | None = None) -> list[str]:
        import numpy as np

        from arte.constrain import TokenGuard, check_formats, sample

        convs = check_conversations(conversations)
        check_sampling(temperature, max_new_tokens, top_p)
        fmts = check_formats(formats, len(convs))
        self.calls.append({"conversations": convs, "formats": fmts, "temperature": temperature, "seed": seed})
        tally = counts if counts is not None else {}
        out = []
        for i, (msgs, fmt) in enumerate(zip(convs, fmts)):
            rng = np.random.default_rng([seed, i])
            noise = np.random.default_rng([seed, i, 7])
            guard = (TokenGuard(fmt, self.vocab, max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, counts=tally) if fmt is not None else None)
            text = b""
            for _ in range(max_new_tokens):
                logits = self._logits(msgs, text.decode("utf-8", "replace"), noise)
                t = sample(logits, temperature, top_p, rng)
                if guard is not None:
                    t = guard.choose(t, logits, rng)
                if t == self.eos:
                    break
                text += self.vocab.pieces[t]
            out.append(text.decode("utf-8", "replace"))
        return out

    def close(self) -> None:
        pass


def scripted_preference(script: str, ramble: str) -> Callable[[str], str | None]:
    """A preference that writes ``script`` and then ends; once the text has left the script (the
    constraint changed something) it rambles: ``ramble`` over and over, from where the text's length
    points into it, never ending by itself."""

    def prefer(text: str) -> str | None:
        if script.startswith(text):
            rest = script[len(text):]
            return rest or None
        at = len(text) % len(ramble)
        return ramble[at:] + ramble * 3

    return prefer
