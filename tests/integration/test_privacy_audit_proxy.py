"""The recording proxy on loopback: it forwards to a real upstream HTTP server, relays the answers, and
records every request byte so the wire audit can read it (the harness the agent/server e2e audit uses)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import pytest

from arte.tasks import Example
from tests.support.privacy_audit import RecordingProxy, assert_no_leaks, find_leaks

ITEMS = (Example("priv:1", "Lionel Messi caught the screen pass in the second quarter", ("implausible",),
                 ("plausible", "implausible")),)
CONTENT = b"0123456789" * 10


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        body, status = (CONTENT, 200)
        if rng:
            a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            body, status = CONTENT[a:b + 1], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else self._chunked()
        out = json.dumps({"received": len(data), "path": self.path}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def _chunked(self) -> bytes:
        out = b""
        while (size := int(self.rfile.readline().strip() or b"0", 16)):
            out += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return out

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_proxy_forwards_records_and_the_audit_reads_it(upstream):
    with RecordingProxy(upstream) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        r = client.post("/api/v1/rounds/r1/reports", json={"scores": [{"draft_id": "d0", "n_items": 20.0,
                                                                        "n_correct": 7.5}]},
                        headers={"Authorization": "Bearer dk_1"})
        assert r.status_code == 201 and r.json()["path"] == "/api/v1/rounds/r1/reports"
        part = client.get("/api/v1/datasets/x/content", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == CONTENT[10:20]
        assert part.headers["X-Upstream"] == "yes"
        streamed = client.post("/api/v1/metrics", content=iter([b'{"a": ', b"1}"]))   # chunked upload
        assert streamed.json()["received"] == len(b'{"a": 1}')
        clean = list(proxy.requests)
        client.post("/api/v1/metrics", json={"note": "Messi caught the screen pass in"})
    assert [(r.method, r.url) for r in clean] == [("POST", "/api/v1/rounds/r1/reports"),
                                                  ("GET", "/api/v1/datasets/x/content"),
                                                  ("POST", "/api/v1/metrics")]
    assert clean[2].body == b'{"a": 1}'
    assert ("Authorization", "Bearer dk_1") in clean[0].headers
    assert_no_leaks(clean, ITEMS)
    leaks = find_leaks(proxy.requests, ITEMS)
    assert {x.request for x in leaks} == {3} and leaks[0].needle.kind == "window"


def test_proxy_rejects_a_non_http_upstream():
    with pytest.raises(ValueError, match="upstream"):
        RecordingProxy("ftp://example")
