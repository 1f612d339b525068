"""A real fleet server for agent tests: `arte-server init` + `arte-server serve` as a subprocess on a
loopback port, with admin helpers over HTTP. Used by the agent's integration and slow tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from arte.wire import API_PREFIX

ROOT = Path(__file__).resolve().parents[2]
DRAFTS = [{"id": "d-yes", "question": "Is 2 even?", "rationale": "Two is even. <ans>yes</ans>", "answer": "yes"},
          {"id": "d-no", "question": "Is 3 even?", "rationale": "Three is odd. <ans>no</ans>", "answer": "no"}]
DATASET = "".join(json.dumps({"input": f"Is {i} even?", "target": "yes" if i % 2 == 0 else "no"}) + "\n"
                  for i in range(200))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, what: str, timeout_s: float = 60.0) -> None:
    """Wait until ``GET url`` answers 200 (start-up, not a timing assumption); raise with the log's tail when
    the process exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout_s:.0f} s")


class LiveServer:
    """`arte-server init` + `arte-server serve` on a loopback port; stop() and start() keep the database."""

    def __init__(self, tmp: Path, signing_key: str | None = None) -> None:
        self.dir = tmp / "server"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.exe = str(Path(sys.executable).parent / "arte-server")
        # the server of this checkout, whatever is installed
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        if signing_key:
            self.env["ARTE_SERVER_DATASET_SIGNING_KEY"] = signing_key
        out = subprocess.run([self.exe, "--data-dir", str(self.dir), "init", "--json"], capture_output=True,
                             text=True, check=True, env=self.env)
        self.admin_key = json.loads(out.stdout)["admin_key"]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = (self.dir / "serve.log").open("ab")
        self.proc = subprocess.Popen([self.exe, "--data-dir", str(self.dir), "serve", "--port", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_until_up(self.proc, f"{self.url}/api/v1/health", self.dir / "serve.log", "arte-server serve")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def admin(self, method: str, path: str, body: Any = None, status: int = 201) -> Any:
        r = httpx.request(method, f"{self.url}/api/v1{path}", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {self.admin_key}"})
        assert r.status_code == status, r.text
        return r.json()

    def cohort_with_token(self) -> tuple[str, str]:
        n = len(self.admin("GET", "/cohorts", status=200))
        task = self.admin("POST", "/tasks", {"name": f"evenness{n}", "instruction": "Is the number even?"})["task_id"]
        cohort = self.admin("POST", "/cohorts", {"name": f"laptops{n}", "task_id": task, "student_model": "default",
                                                  "profile_class": "laptop-cpu", "min_devices": 1})["cohort_id"]
        return cohort, self.admin("POST", "/tokens", {"cohort_id": cohort})["token"]

    def open_round(self, cohort: str, drafts: list[dict[str, Any]] = DRAFTS) -> str:
        return self.admin("POST", "/rounds", {"cohort_id": cohort, "drafts": drafts, "min_items": 2})["round_id"]

    def publish(self, cohort: str, content: str = DATASET) -> dict[str, Any]:
        return self.admin("POST", "/datasets", {"cohort_id": cohort, "content": content, "teacher": "test"})

    def reports(self, round_id: str) -> list[dict[str, Any]]:
        return self.admin("GET", f"/rounds/{round_id}/reports", status=200)


def wait_ready(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll GET /health until it answers (no fixed sleep: each failed poll waits on the socket)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}{API_PREFIX}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            threading.Event().wait(0.05)  # the port is not open yet; give the loop a tick
    raise AssertionError(f"{url} not ready after {timeout_s}s")
