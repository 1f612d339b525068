"""A loopback stand-in for vLLM's OpenAI-compatible server with runtime LoRA updating, written from vLLM's
documented contract (``vllm/entrypoints/openai/serving_models.py``; no vLLM runs here):

* ``GET /v1/models`` — the base model, then every loaded adapter (``{"id": lora_name, "root": lora_path,
  "parent": base}``);
* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` — 400 when either is missing or the name is
  already loaded ("... has already been loaded."), 404 when the path holds no adapter ("No adapter found"),
  else 200 with a plain-text success line;
* ``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` — 404 "... cannot be found." when it is not loaded;
* ``POST /v1/chat/completions`` — 404 for a ``model`` that is neither the base nor a loaded adapter, else the
  reply of ``reply(body)``.

Every request is recorded; ``restart()`` forgets the loaded adapters, as a restarted vLLM does.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from tests.support.teacher_fakes import serve


class _Handler(BaseHTTPRequestHandler):
    server: "FakeVLLM"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.record("GET", self.path, None)
        if self.path != "/v1/models":
            return self._error(404, "NotFoundError", f"no route {self.path}")
        with self.server.lock:
            cards = [{"id": self.server.base, "object": "model", "root": self.server.base, "parent": None}]
            cards += [{"id": n, "object": "model", "root": p, "parent": self.server.base}
                      for n, p in self.server.loras.items()]
        self._json(200, {"object": "list", "data": cards})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.record("POST", self.path, body)
        srv = self.server
        with srv.lock:
            if self.path == "/v1/load_lora_adapter":
                name, path = body.get("lora_name"), body.get("lora_path")
                if not name or not path:
                    return self._error(400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
                if name in srv.loras:
                    return self._error(400, "InvalidUserInput", f"The lora adapter '{name}' has already been loaded.")
                if not (Path(path) / "adapter_config.json").is_file():
                    return self._error(404, "NotFoundError", f"No adapter found for {path}")
                srv.loras[name] = path
                return self._text(f"Success: LoRA adapter '{name}' added successfully.")
            if self.path == "/v1/unload_lora_adapter":
                name = body.get("lora_name")
                if name not in srv.loras:
                    return self._error(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
                del srv.loras[name]
                return self._text(f"Success: LoRA adapter '{name}' removed successfully.")
            if self.path != "/v1/chat/completions":
                return self._error(404, "NotFoundError", f"no route {self.path}")
            if body.get("model") != srv.base and body.get("model") not in srv.loras:
                return self._error(404, "NotFoundError", f"The model `{body.get('model')}` does not exist.")
        self._json(200, {"choices": [{"message": {"role": "assistant", "content": srv.reply(body)}}]})

    def _error(self, status: int, kind: str, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _text(self, text: str) -> None:
        self._send(200, json.dumps(text).encode(), "application/json")

    def _json(self, status: int, doc: dict) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _send(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeVLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, base: str, reply: Callable[[dict[str, Any]], str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base = base
        self.reply = reply
        self.lock = threading.Lock()
        self.loras: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []

    def record(self, method: str, path: str, body: Any) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": path, "body": body})

    def calls(self, path: str) -> list[Any]:
        """The bodies sent to ``path``, in order."""
        with self.lock:
            return [r["body"] for r in self.requests if r["path"] == path]

    def restart(self) -> None:
        with self.lock:
            self.loras.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def serve_vllm(base: str, reply: Callable[[dict[str, Any]], str]) -> contextlib.AbstractContextManager[FakeVLLM]:
    """The fake on a free loopback port, stopped when the block ends; ``srv.url`` is its root."""
    return serve(FakeVLLM(base, reply))
