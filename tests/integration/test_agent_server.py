"""The agent against the real fleet server (`arte-server serve`, a subprocess on loopback, SQLite).

enroll -> score -> report -> dataset download -> train step; the server down while reporting, then up (the
report arrives exactly once); the download interrupted mid-stream and resumed with Range; a corrupted
byte detected and the file not used. The student here is the copying fake (the real model runs in
``tests/slow/test_agent_e2e.py``); everything else is real: HTTP, the server, its database, the agent's
SQLite state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from click.testing import CliRunner

import edge_agent.cli as cli  # noqa: E402
from arte.retry import RetryPolicy
from arte.wire import Accuracy  # noqa: E402
from edge_agent.client import ServerClient  # noqa: E402
from edge_agent.errors import IntegrityError, NetworkError  # noqa: E402
from edge_agent.hardware import Hardware  # noqa: E402
from edge_agent.loop import Agent, run_once  # noqa: E402
from edge_agent.state import State  # noqa: E402
from edge_agent.train_step import TrainRequest, TrainResult  # noqa: E402
from firmware_profiles import load_profiles  # noqa: E402
from tests.support.fakes import CopyingStudent  # noqa: E402
from tests.support.live_server import DATASET, LiveServer  # noqa: E402

IDLE = Hardware(arch="x86_64", cpu_model="test", cpu_cores=2, memory_total=8 << 30, memory_available=6 << 30,
                device_tree_model=None, load_1min=0.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module (start-up costs seconds); each test makes its own cohort and token."""
    s = LiveServer(tmp_path_factory.mktemp("fleet"))
    yield s
    s.stop()


@pytest.fixture
def private_data(tmp_path: Path) -> Path:
    p = tmp_path / "private.jsonl"
    p.write_text("".join(json.dumps({"input": f"Is {i} even? private-{i}", "choices": ["yes", "no"],
                                     "answer": "yes" if i % 2 == 0 else "no"}) + "\n" for i in range(24)))
    return p


class Trainer:
    def __init__(self) -> None:
        self.calls: list[TrainRequest] = []

    def __call__(self, req: TrainRequest) -> TrainResult:
        self.calls.append(req)
        req.out_dir.mkdir(parents=True)
        (req.out_dir / "adapter.gguf").write_bytes(b"GGUF")
        return TrainResult(req.out_dir / "adapter.gguf", "gguf-lora", Accuracy(0.5, 0.5, 12), Accuracy(0.75, 0.7, 12),
                           keep=True)


def enroll(server: LiveServer, token: str, state_dir: Path, data: Path) -> None:
    r = CliRunner().invoke(cli.main, ["--state-dir", str(state_dir), "enroll", "--server", server.url, "--token",
                                      token, "--profile", "laptop-cpu", "--data", str(data), "--json"])
    assert r.exit_code == 0, r.output


def agent_for(state_dir: Path, trainer: Any = None, transport: httpx.BaseTransport | None = None,
              **kw: Any) -> Agent:
    st = State(state_dir)
    client = ServerClient(st.require("server_url"), st.read_device_key(), transport=transport,
                          wait=lambda s: None, retry=RetryPolicy(attempts=2), timeout=10)
    return Agent(state=st, client=client, profile=load_profiles()["laptop-cpu"],
                 open_student=lambda p, a: CopyingStudent(), train=trainer or Trainer(), detect=lambda: IDLE,
                 noise_seed=0, **kw)


def test_enroll_score_report_download_train(server: LiveServer, tmp_path: Path, private_data: Path) -> None:
    cohort, token = server.cohort_with_token()
    round_id = server.open_round(cohort)
    manifest = server.publish(cohort)
    enroll(server, token, tmp_path / "agent", private_data)
    trainer = Trainer()
    it = run_once(agent_for(tmp_path / "agent", trainer))
    assert it.round["step"] == "queued" and it.dataset["step"] == "trained", it.to_dict()
    (report,) = server.reports(round_id)
    assert {s["draft_id"] for s in report["scores"]} == {"d-yes", "d-no"}
    assert trainer.calls[0].dataset_path.read_text() == DATASET
    metrics = server.admin("GET", f"/metrics?cohort_id={cohort}", status=200)
    assert len(metrics) == 1 and metrics[0]["dataset_id"] == manifest["dataset_id"]
    # a second iteration sends nothing new
    it = run_once(agent_for(tmp_path / "agent", trainer))
    assert not it.progressed and len(server.reports(round_id)) == 1 and len(trainer.calls) == 1


def test_server_down_while_reporting_then_up_arrives_once(server: LiveServer, tmp_path: Path,
                                                           private_data: Path) -> None:
    cohort, token = server.cohort_with_token()
    round_id = server.open_round(cohort)
    enroll(server, token, tmp_path / "agent", private_data)
    agent = agent_for(tmp_path / "agent")

    def student_after_the_server_died(profile: Any, adapter: str | None) -> CopyingStudent:
        server.stop()                # drafts are in; the server goes away before the report is sent
        return CopyingStudent()

    agent.open_student = student_after_the_server_died
    with pytest.raises(NetworkError):
        run_once(agent)
    assert agent.state.journal(f"round:{round_id}")[0] == "queued"
    assert len(agent.state.pending()) == 1
    server.start()
    assert server.reports(round_id) == []
    it = run_once(agent_for(tmp_path / "agent"))
    assert len(it.delivery["delivered"]) == 1 and it.delivery["pending"] == 0
    run_once(agent_for(tmp_path / "agent"))
    assert len(server.reports(round_id)) == 1


def test_lost_receipt_is_resent_and_deduplicated_by_the_server(server: LiveServer, tmp_path: Path,
                                                               private_data: Path) -> None:
    cohort, token = server.cohort_with_token()
    round_id = server.open_round(cohort)
    enroll(server, token, tmp_path / "agent", private_data)
    st = State(tmp_path / "agent")
    real = httpx.HTTPTransport()

    class LoseAnswers(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            resp = real.handle_request(request)
            if request.method == "POST":
                resp.read()
                raise httpx.ReadError("connection dropped before the answer arrived", request=request)
            return resp

    it = run_once(agent_for(tmp_path / "agent", transport=LoseAnswers()))
    assert it.delivery["pending"] == 1 and len(server.reports(round_id)) == 1
    it = run_once(agent_for(tmp_path / "agent"))
    assert it.delivery["delivered"][0]["duplicate"] is True
    assert len(server.reports(round_id)) == 1
    sent = [m for m in st.sent() if m["kind"] == "report"]
    assert len(sent) == 1 and json.loads(sent[0]["response"])["duplicate"] is True


class CutStream(httpx.BaseTransport):
    """Real HTTP, but the first dataset body is cut after ``after`` bytes (or the agent 'dies' there)."""

    def __init__(self, after: int, exc: BaseException) -> None:
        self.real, self.after, self.exc, self.cut = httpx.HTTPTransport(), after, exc, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.real.handle_request(request)
        if not request.url.path.endswith("/content") or self.cut:
            return resp
        self.cut = True
        data = resp.read()[:self.after]
        exc = self.exc

        class Stream(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                yield data
                raise exc

        return httpx.Response(resp.status_code, headers=resp.headers, stream=Stream(), request=request)


class Died(BaseException):
    pass


def test_killed_mid_download_resumes_with_range_and_verifies(server: LiveServer, tmp_path: Path,
                                                             private_data: Path) -> None:
    cohort, token = server.cohort_with_token()
    m = server.publish(cohort)
    enroll(server, token, tmp_path / "agent", private_data)
    with pytest.raises(Died):
        run_once(agent_for(tmp_path / "agent", transport=CutStream(1000, Died())))
    part = tmp_path / "agent" / "datasets" / f"{m['sha256']}.jsonl.part"
    assert part.stat().st_size == 1000
    seen: list[str | None] = []
    real = httpx.HTTPTransport()

    class Spy(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/content"):
                seen.append(request.headers.get("Range"))
            return real.handle_request(request)

    trainer = Trainer()
    it = run_once(agent_for(tmp_path / "agent", trainer, transport=Spy()))
    assert seen == ["bytes=1000-"] and it.dataset["step"] == "trained"
    assert trainer.calls[0].dataset_path.read_text() == DATASET and not part.exists()


def test_a_corrupted_byte_is_detected_and_the_file_not_used(server: LiveServer, tmp_path: Path,
                                                            private_data: Path) -> None:
    cohort, token = server.cohort_with_token()
    m = server.publish(cohort)
    enroll(server, token, tmp_path / "agent", private_data)
    with pytest.raises(Died):
        run_once(agent_for(tmp_path / "agent", transport=CutStream(1000, Died())))
    part = tmp_path / "agent" / "datasets" / f"{m['sha256']}.jsonl.part"
    data = bytearray(part.read_bytes())
    data[500] ^= 0x20                      # a flipped bit in what was already on disk
    part.write_bytes(bytes(data))
    trainer = Trainer()
    it = run_once(agent_for(tmp_path / "agent", trainer))
    assert it.dataset["step"] == "trained"
    assert trainer.calls[0].dataset_path.read_text() == DATASET   # the corrupt copy was never used


def test_signed_dataset_from_the_server(tmp_path: Path, private_data: Path) -> None:
    key = "ab" * 32
    server = LiveServer(tmp_path, signing_key=key)
    try:
        cohort, token = server.cohort_with_token()
        m = server.publish(cohort)
        assert m["signature"].startswith("hmac-sha256:")
        enroll(server, token, tmp_path / "agent", private_data)
        with pytest.raises(IntegrityError, match="no dataset signing key"):
            run_once(agent_for(tmp_path / "agent"))
        assert list((tmp_path / "agent" / "datasets").iterdir()) == []   # nothing unverified is kept
        with State(tmp_path / "agent") as st:
            st.set(dataset_key="cd" * 32)                                  # the wrong key
        with pytest.raises(IntegrityError, match="bad signature"):
            run_once(agent_for(tmp_path / "agent"))
        with State(tmp_path / "agent") as st:
            st.set(dataset_key=key)
        it = run_once(agent_for(tmp_path / "agent"))
        assert it.dataset["step"] == "trained"
    finally:
        server.stop()
