"""Wire audit for tests: assert that nothing private about a device's validation items is in any byte it
sends (URLs, headers, bodies).

What counts as a leak of an item (``arte.tasks.Example``):

* its input text, or any window of ``window_words`` (default 5) consecutive words of it, matched on
  words (case-folded, punctuation and whitespace ignored), so JSON escapes, re-wrapping or URL encoding
  do not hide it;
* a *distinctive* answer: one that has at least two words or ``min_answer_chars`` characters and is not
  shared by several items (option vocabularies like ``True``/``plausible`` or a count like ``two`` name no
  item and are left out);
* its id (when distinctive: not a bare number under 6 digits) and the sha256 hex of its id or input
  (a "pseudonymised" id is still an id).

Anything also found in ``public`` text (the round's drafts, task descriptions: what the server already
has) is not a leak. Every part is searched as sent, URL-decoded, as the strings inside it when it is JSON
(or JSON lines), and after gunzip/zlib when compressed (URL decoding also covers form fields).

Use:

* on captured bytes: ``assert_no_leaks([body, ...], examples, public=[...])``;
* in process: wrap an httpx transport with :class:`RecordingTransport` and audit ``transport.requests``;
* end to end: run the agent against the real server through :class:`RecordingProxy` (a reverse proxy on
  loopback that records every request and forwards it) and audit ``proxy.requests``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import re
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Sequence
from urllib.parse import unquote_plus, urlsplit

import httpx

from arte.tasks import Example

__all__ = ["SentRequest", "Needle", "Leak", "needles_for", "find_leaks", "assert_no_leaks",
           "RecordingTransport", "RecordingProxy"]

_WORD = re.compile(r"\w+")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass(frozen=True)
class SentRequest:
    """One request as it went over the wire."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def parts(self) -> list[tuple[str, bytes]]:
        headers = [(f"header:{k}", f"{k}: {v}".encode()) for k, v in self.headers]
        return [("url", self.url.encode())] + headers + [("body", self.body)]


@dataclass(frozen=True)
class Needle:
    """A private string to look for: ``kind`` is text, window, answer, id or hash."""

    kind: str
    item_id: str
    text: str


@dataclass(frozen=True)
class Leak:
    request: int
    part: str
    view: str
    needle: Needle

    def __str__(self) -> str:
        return f"request {self.request} {self.part} ({self.view}): {self.needle.kind} of item " \
               f"{self.needle.item_id!r}: {self.needle.text[:80]!r}"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _norm(text: str) -> str:
    return " " + " ".join(_words(text)) + " "


def _distinctive_id(item_id: str) -> bool:
    return not (item_id.isdigit() and len(item_id) < 6)


def needles_for(examples: Sequence[Example], *, window_words: int = 5, min_answer_chars: int = 8,
                public: Iterable[str] = ()) -> list[Needle]:
    """The private strings of ``examples`` (see the module docstring), minus those in ``public``."""
    pub_text = "\n".join(public)
    pub = _norm(pub_text)
    vocab: dict[str, int] = {}
    for e in examples:
        for s in {_norm(x) for x in (*e.targets, *e.choices)}:
            vocab[s] = vocab.get(s, 0) + 1
    out: list[Needle] = []
    seen: set[tuple[str, str]] = set()

    def add(kind: str, item_id: str, text: str) -> None:
        if (kind, text) not in seen and (text not in pub if kind in ("text", "window", "answer") else
                                         text not in pub_text):
            seen.add((kind, text))
            out.append(Needle(kind, item_id, text))

    for e in examples:
        words = _words(e.input)
        if len(words) >= 3 or len(e.input.strip()) >= 12:
            add("text", e.id, " " + " ".join(words) + " ")
        for i in range(len(words) - window_words + 1):
            add("window", e.id, " " + " ".join(words[i:i + window_words]) + " ")
        for t in e.targets:
            nt = _norm(t)
            long_enough = len(nt.split()) >= 2 or len(nt.strip()) >= min_answer_chars
            if nt.strip() and vocab.get(nt, 0) < 2 and long_enough:
                add("answer", e.id, nt)
        if _distinctive_id(e.id):
            add("id", e.id, e.id)
        for raw in (e.id, e.input):
            add("hash", e.id, hashlib.sha256(raw.encode("utf-8")).hexdigest())
    return out


def _json_strings(obj: Any, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.append(str(k))
            _json_strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _json_strings(v, out)


def _views(data: bytes, depth: int = 0) -> list[tuple[str, str]]:
    """(name, text) renderings of one part under which private text could hide."""
    views: list[tuple[str, str]] = []
    for name, decomp in (("gunzip", gzip.decompress), ("zlib", zlib.decompress)):
        if depth < 3 and data[:1] in (b"\x1f", b"\x78"):
            try:
                views += [(f"{name}/{v}", t) for v, t in _views(decomp(data), depth + 1)]
            except (OSError, zlib.error, EOFError):
                pass
    text = data.decode("utf-8", errors="replace")
    views += [("raw", text), ("url-decoded", unquote_plus(text))]
    strings: list[str] = []
    for chunk in [text] + (text.splitlines() if "\n" in text.strip() else []):
        try:
            _json_strings(json.loads(chunk), strings)
        except ValueError:
            continue
    if strings:
        views.append(("json", "\n".join(strings)))
    return views


def find_leaks(sent: Iterable[SentRequest | bytes | str], examples: Sequence[Example], *,
               public: Iterable[str] = (), window_words: int = 5, min_answer_chars: int = 8) -> list[Leak]:
    """Every occurrence of a private needle of ``examples`` in ``sent`` (requests or raw bodies)."""
    needles = needles_for(examples, window_words=window_words, min_answer_chars=min_answer_chars,
                          public=public)
    worded = [n for n in needles if n.kind in ("text", "window", "answer")]
    literal = [(n, re.compile(r"(?<![\w])" + re.escape(n.text) + r"(?![\w])", re.IGNORECASE))
               for n in needles if n.kind in ("id", "hash")]
    leaks: list[Leak] = []
    for r_i, req in enumerate(sent):
        if isinstance(req, (bytes, str)):
            req = SentRequest("?", "", (), req.encode() if isinstance(req, str) else req)
        for part, data in req.parts():
            found: set[Needle] = set()
            for view, text in _views(data):
                normed = _norm(text)
                for n in worded:
                    if n not in found and n.text in normed:
                        found.add(n)
                        leaks.append(Leak(r_i, part, view, n))
                for n, pattern in literal:
                    if n not in found and pattern.search(text):
                        found.add(n)
                        leaks.append(Leak(r_i, part, view, n))
    return leaks


def assert_no_leaks(sent: Iterable[SentRequest | bytes | str], examples: Sequence[Example],
                    **kwargs: Any) -> None:
    """Fail with a readable list when any private needle of ``examples`` is in ``sent``."""
    sent = list(sent)
    leaks = find_leaks(sent, examples, **kwargs)
    if leaks:
        shown = "\n  ".join(str(x) for x in leaks[:20])
        raise AssertionError(f"{len(leaks)} private string(s) of {len(examples)} items found in "
                             f"{len(sent)} sent request(s):\n  {shown}")


class RecordingTransport(httpx.BaseTransport):
    """An httpx transport that records every request (as sent) and hands it to ``inner``."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[SentRequest] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.requests.append(SentRequest(request.method, str(request.url),
                                         tuple((k, v) for k, v in request.headers.items()), body))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class RecordingProxy:
    """A reverse proxy on 127.0.0.1 that records every request and forwards it to ``upstream``
    (``http://host:port``). Use as a context manager; point the client at ``proxy.url``."""

    def __init__(self, upstream: str, *, timeout: float = 60.0) -> None:
        u = urlsplit(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host, self.upstream_port = u.hostname, u.port or 80
        self.timeout = timeout
        self.requests: list[SentRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the proxy is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "RecordingProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self) -> None:
                body = proxy._read_body(self)
                headers = tuple((k, v) for k, v in self.headers.items())
                with proxy._lock:
                    proxy.requests.append(SentRequest(self.command, self.path, headers, body))
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port,
                                                  timeout=proxy.timeout)
                try:
                    fwd = {k: v for k, v in headers if k.lower() not in _HOP_BY_HOP}
                    fwd["Host"] = f"{proxy.upstream_host}:{proxy.upstream_port}"
                    send_body = body if body or self.command in ("POST", "PUT", "PATCH") else None
                    conn.request(self.command, self.path, body=send_body, headers=fwd)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_BY_HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="recording-proxy",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    @staticmethod
    def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += handler.rfile.read(size)
                handler.rfile.readline()
        n = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(n) if n else b""
