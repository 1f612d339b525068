"""A scripted teacher for unit tests: replies come from a function of the conversation, every call is
recorded. It implements :class:`arte.teacher.Teacher` and validates its input like the real backends."""

from __future__ import annotations

import contextlib
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from arte.constrain import check_formats
from arte.drafts import Draft
from arte.grammar import Format
from arte.pairs import PreferencePair
from arte.planted import PlantedRule, holds
from arte.questions import split_questions
from arte.tasks import Example, Task
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
    """Like ``tests.support.fakes.CopyingStudent`` (bytes as tokens; the "model" answers what the demonstration
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


def planted_drafts(n_questions: int = 40) -> list[Draft]:
    out = []
    for q in range(n_questions):
        for k, r in enumerate((PLANTED_SHORT, PLANTED_LONG)):
            out.append(Draft(f"q{q}-{k}", f"Is {q} odd?\nOptions: yes, no", r, "yes", question_id=f"q{q}"))
    return out


PARITY_TASK = Task("parity", "Say whether the number is odd.", tuple(
    Example(f"e{i}", f"Is {i} odd?", ("yes" if i % 2 else "no",), ("yes", "no")) for i in range(40)))


def fake_align(pairs: Sequence[PreferencePair], out_dir: Path, progress: Any) -> dict[str, Any]:
    """'DPO' that moves the teacher's rates by 0.02 per pair whose chosen side has a property its rejected
    side lacks (minus the opposite): direction and strength come only from the pairs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    short, steps, qty = PlantedRule("short", max_words=20), PlantedRule("steps"), PlantedRule("quantity")

    def net(rule: PlantedRule) -> float:
        if rule.target == "question":   # question pairs: blocks of questions, counted one by one
            return sum(sum(holds(rule, q) for q in split_questions(p.chosen)[0])
                       - sum(holds(rule, q) for q in split_questions(p.rejected)[0]) for p in pairs)
        return sum(holds(rule, p.chosen) - holds(rule, p.rejected) for p in pairs)

    state = {"p_short": float(np.clip(0.5 + 0.02 * net(short), 0.02, 0.98)),
             "p_steps": float(np.clip(0.3 + 0.02 * net(steps), 0.02, 0.98)),
             "p_qty": float(np.clip(0.5 + 0.05 * net(qty), 0.02, 0.98))}
    (out_dir / "fake.json").write_text(json.dumps(state))
    if progress is not None:
        progress("train", 1, 1)
    return {"steps": 1, "reward": {"held_out": {"pairs": 2, "after": {"accuracy": 1.0}}},
            "pairs": {"total": len(pairs)}}


def parity_teacher(adapter: Path | None) -> ScriptedTeacher:
    if adapter is None:
        return fake_teacher(0.5)
    state = json.loads((adapter / "fake.json").read_text())
    return fake_teacher(state["p_short"], state["p_steps"], state["p_qty"], adapter=str(adapter))


def fake_teacher(p_short: float, p_steps: float = 0.3, p_qty: float = 0.5, name: str = "fake",
                 adapter: str | None = None) -> ScriptedTeacher:
    """Questions: fresh questions that name a number (a digit) with probability ``p_qty``; rationales:
    short with probability ``p_short`` (else long), laid out in numbered steps with probability
    ``p_steps``; every draw from (seed, index, prompt)."""
    counter = [0]

    def reply(messages: list[dict[str, str]], kw: dict[str, Any], i: int) -> str:
        if is_question_prompt(messages):
            rng = np.random.default_rng([kw["seed"], i, zlib.crc32(messages[-1]["content"].encode())])
            counter[0] += 5
            return "\n\n".join(
                f"Question {k + 1}: Is {n if rng.random() < p_qty else 'the word ' + _letters(n)} odd?\n"
                f"Options: yes, no" for k, n in enumerate(range(1000 + counter[0], 1005 + counter[0])))
        q = asked_question(messages)
        rng = np.random.default_rng([kw["seed"], i, zlib.crc32(q.encode()),
                                     zlib.crc32(messages[0]["content"].encode())])
        if rng.random() < p_steps:
            return PARITY_STEPS
        return PARITY_SHORT if rng.random() < p_short else PARITY_LONG

    return ScriptedTeacher(reply, name=name, adapter=adapter)


# Rationales of the planted-preference tests: one short, one long (arte.planted's "short" rule tells them apart).
PLANTED_SHORT = "Yes. <ans>yes</ans>"
PLANTED_LONG = " ".join(["word"] * 60) + " <ans>yes</ans>"
PARITY_SHORT = "It is odd. <ans>yes</ans>"
PARITY_LONG = "Let me think about this number carefully: " + " ".join(["then"] * 50) + " so. <ans>yes</ans>"


PARITY_STEPS = "1. Look at the last digit.\n2. It is odd.\n3. So yes. <ans>yes</ans>"


def _letters(n: int) -> str:
    return "".join("abcdefghij"[int(c)] for c in str(n))
