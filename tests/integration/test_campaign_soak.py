"""Soak test: a campaign runs three rounds by itself while things go wrong.

Real parts: ``arte-server serve`` (a subprocess on loopback, SQLite), two real worker processes
(``tests/support/soak_worker.py``: the real worker loop, queue, handlers and campaign driver, with a scripted
teacher and a fake DPO, so it takes seconds), and 20 simulated devices: real ``edge_agent`` loops with their
own state dirs over real HTTP, each with a fast fake student (:class:`tests.support.fakes.RationaleStudent`) and a
fake trainer. The operator types one command, ``arte-server campaigns create --cohort-id … --rounds 3``;
after it only the server, the workers and the devices act.

Faults injected while the campaign runs:

* a worker killed (SIGKILL) in the middle of a job;
* a worker dying after a handler stored its output but before its job was marked done, for the elicit,
  align and tailor steps (the window in which a naive retry stores a second round, adapter or dataset);
* the server stopped while a device scores (its report waits in its outbox) and restarted;
* four devices offline for round 2 (it closes on the other 16; they come back for round 3);
* lost answers: some devices' reports reach the server but the answer does not come back, so they
  send them again.

It asserts that every round completes, every report is stored exactly once, no step ran twice, and the
lineage is complete; and prints its figures (devices, rounds, faults, reports, duplicates, time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import edge_agent.cli as agent_cli
from arte.wire import Accuracy
from edge_agent.client import RetryPolicy, ServerClient
from edge_agent.errors import AgentError
from edge_agent.hardware import Hardware
from edge_agent.loop import Agent, run_once
from edge_agent.state import State
from edge_agent.train_step import TrainRequest, TrainResult
from firmware_profiles import load_profiles
from tests.support.fakes import RationaleStudent
from tests.support.live_server import ROOT, LiveServer

DEVICES, ROUNDS, OFFLINE, CLOSE_AT, K = 20, 3, 4, 16, 5
ITEMS_PER_DEVICE = 16
TIMEOUT_S = 240
IDLE = Hardware(arch="x86_64", cpu_model="soak", cpu_cores=2, memory_total=8 << 30, memory_available=6 << 30,
                device_tree_model=None, load_1min=0.0)
SPORTS = ["football", "basketball", "hockey", "tennis", "golf", "baseball"]


def _trainer(req: TrainRequest) -> TrainResult:
    req.out_dir.mkdir(parents=True, exist_ok=True)
    (req.out_dir / "adapter.gguf").write_bytes(b"GGUF")
    return TrainResult(req.out_dir / "adapter.gguf", "gguf-lora", Accuracy(0.5, 0.5, 8), Accuracy(0.75, 0.625, 8),
                       keep=True)


class Devices(httpx.BaseTransport):
    """The devices' network: it notes the rounds whose drafts they fetched, in order (``rounds``), and with
    ``lossy`` every other report POST reaches the server but its answer is lost (the agent sends it again)."""

    def __init__(self, rounds: list[str], lossy: bool) -> None:
        self.real = httpx.HTTPTransport()
        self.rounds, self.lossy = rounds, lossy
        self.n = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/drafts") and path.split("/")[-2] not in self.rounds:
            self.rounds.append(path.split("/")[-2])
        resp = self.real.handle_request(request)
        if self.lossy and request.method == "POST" and path.endswith("/reports"):
            self.n += 1
            if self.n % 2:
                resp.read()
                raise httpx.ReadError("connection dropped before the answer arrived", request=request)
        return resp


class Workers:
    """Worker processes (``tests.support.soak_worker``) on the server's database."""

    def __init__(self, data_dir: Path, crash_dir: Path) -> None:
        self.data_dir, self.log = data_dir, data_dir / "workers.log"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                    "ARTE_SERVER_WORKER_POLL_S": "0.1", "ARTE_SERVER_CAMPAIGN_TICK_S": "0.1",
                    "ARTE_SERVER_JOB_HEARTBEAT_S": "0.3", "ARTE_SERVER_JOB_DEAD_AFTER_S": "2",
                    "ARTE_SERVER_JOB_RETRY_BASE_S": "0.2", "ARTE_SERVER_JOB_RETRY_MAX_S": "1",
                    "SOAK_MODEL_S": "0.3", "SOAK_CRASH": "elicit,align,tailor", "SOAK_CRASH_DIR": str(crash_dir)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            p = subprocess.Popen([sys.executable, "-m", "tests.support.soak_worker", "--data-dir", str(self.data_dir),
                                  "worker"], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        self.procs.append(p)
        return p

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def supervise(self, want: int) -> int:
        """Start workers until ``want`` are alive (what systemd's Restart=on-failure does); returns how many."""
        started = 0
        while len(self.alive()) < want:
            self.start()
            started += 1
        return started

    def stop(self) -> None:
        for p in self.alive():
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[LiveServer, Workers]]:
    server = LiveServer(tmp_path)
    workers = Workers(server.dir, tmp_path)
    try:
        yield server, workers
    finally:
        workers.stop()
        server.stop()


def _private_data(path: Path, device: int, truth: dict[str, str]) -> None:
    lines = []
    for k in range(ITEMS_PER_DEVICE):
        text = f"Device {device} player {k} played {SPORTS[k % 6]} in a {('home', 'away')[k % 2]} game"
        answer = ("yes", "no")[(k // 2) % 2]
        truth[text] = answer
        lines.append(json.dumps({"input": text, "choices": ["yes", "no"], "answer": answer}))
    path.write_text("\n".join(lines) + "\n")


class Students:
    """Opens the devices' fake students; ``hook`` runs once, before the first student opens to score the
    ``hook_round``-th round whose drafts devices fetched (a fault that lands while a device scores: its
    drafts are in, its report is not sent yet)."""

    def __init__(self, truth: dict[str, str]) -> None:
        self.truth = truth
        self.rounds: list[str] = []   # filled by the devices' transport
        self.hook: Any = None
        self.hook_round = 0

    def __call__(self, profile: Any, adapter: str | None) -> RationaleStudent:
        if self.hook is not None and len(self.rounds) >= self.hook_round:
            hook, self.hook = self.hook, None
            hook()
        return RationaleStudent(self.truth)


def _setup(server: LiveServer, tmp: Path) -> tuple[str, list[Agent], Students]:
    seeds = [{"input": f"Seed player {i} played {SPORTS[i]} today", "choices": ["yes", "no"],
              "answer": ("yes", "no")[i % 2]} for i in range(4)]
    task = server.admin("POST", "/tasks", {"name": "soak-sports", "instruction": "Is the sentence plausible?",
                                           "seeds": seeds})["task_id"]
    cohort = server.admin("POST", "/cohorts", {"name": "soak", "task_id": task, "student_model": "default",
                                               "profile_class": "laptop-cpu", "min_devices": K})["cohort_id"]
    truth: dict[str, str] = {}
    students = Students(truth)
    agents = []
    for i in range(DEVICES):
        token = server.admin("POST", "/tokens", {"cohort_id": cohort})["token"]
        data, state_dir = tmp / f"dev{i}.jsonl", tmp / f"dev{i}"
        _private_data(data, i, truth)
        r = CliRunner().invoke(agent_cli.main, ["--state-dir", str(state_dir), "enroll", "--server", server.url,
                                                "--token", token, "--profile", "laptop-cpu", "--name", f"dev{i}",
                                                "--data", str(data), "--json"])
        assert r.exit_code == 0, r.output
        st = State(state_dir)
        client = ServerClient(server.url, st.read_device_key(), wait=lambda s: None, timeout=10,
                              retry=RetryPolicy(attempts=3), transport=Devices(students.rounds, lossy=i % 5 == 0))
        agents.append(Agent(state=st, client=client, profile=load_profiles()["laptop-cpu"],
                            open_student=students, train=_trainer, detect=lambda: IDLE,
                            noise_seed=i))
    return cohort, agents, students


class Sweep:
    """Every online device runs one iteration; what they got back is counted."""

    def __init__(self) -> None:
        self.receipts: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.network_errors = 0

    def __call__(self, agents: list[Agent], offline: set[int]) -> None:
        for i, agent in enumerate(agents):
            if i in offline:
                continue
            try:
                it = run_once(agent)
            except AgentError:   # the server is down: the outbox keeps the report for the next iteration
                self.network_errors += 1
                continue
            self.receipts += [r for r in it.delivery["delivered"] if "report_id" in r]
            self.rejected += it.delivery["rejected"]


def test_a_campaign_completes_its_rounds_through_worker_kills_server_restarts_and_offline_devices(
        fleet: tuple[LiveServer, Workers], tmp_path: Path) -> None:
    server, workers = fleet
    t0 = time.monotonic()
    cohort, agents, students = _setup(server, tmp_path)
    assert students.rounds == []
    workers.supervise(2)
    # the operator's one command; from here on only the server, the workers and the devices act
    out = subprocess.run(
        [server.exe, "--data-dir", str(server.dir), "campaigns", "create", "--cohort-id", cohort, "--rounds",
         str(ROUNDS), "--questions", "4", "--styles", "plain,expert", "--drafts-config", '{"batch_size": 4}',
         "--min-items", "4", "--close-devices", str(CLOSE_AT), "--deadline-s", "60", "--max-failures", "5",
         "--tailor-config", '{"n_questions": 6, "check_samples": 0, "batch_size": 4}', "--json"],
        capture_output=True, text=True, env=server.env, check=True)
    camp = json.loads(out.stdout)
    cid = camp["campaign_id"]
    assert camp["policy"]["drafts"] == {"batch_size": 4, "n_questions": 4, "styles": ["plain", "expert"]}
    faults: list[str] = []
    sweep = Sweep()
    killed = False
    # the server goes down while the first device scores round 3: its report waits in its outbox, the
    # other devices cannot reach the server; the loop below brings it back
    students.hook, students.hook_round = server.stop, 3
    restarts = 0
    while camp["state"] == "active":
        assert time.monotonic() - t0 < TIMEOUT_S, f"campaign stuck: {json.dumps(camp, default=str)[:3000]}"
        offline = set(range(OFFLINE)) if camp["round_no"] == 2 else set()
        sweep(agents, offline)
        if server.proc is None:   # it went down while the first device scored round 3: back up
            server.start()
            faults.append("server stopped while a device scored round 3, then restarted")
        if not killed:   # SIGKILL the worker that runs a job, in the middle of it
            running = server.admin("GET", f"/jobs?state=running&cohort_id={cohort}", status=200)
            pids = {int(j["worker_id"].split(":")[1]) for j in running if j["worker_id"]}
            victims = [p for p in workers.alive() if p.pid in pids]
            if victims:
                victims[0].kill()
                victims[0].wait()
                killed = True
                faults.append(f"worker SIGKILLed during {running[0]['kind']} job {running[0]['job_id']}")
        restarts += workers.supervise(2)
        camp = server.admin("GET", f"/campaigns/{cid}?events=1000", status=200)
    elapsed_campaign = time.monotonic() - t0
    assert camp["state"] == "completed", json.dumps(camp, default=str)[:3000]
    sweep(agents, set())   # the devices train on the last dataset and report their metrics
    sweep(agents, set())
    camp = server.admin("GET", f"/campaigns/{cid}?events=1000", status=200)
    faults += [f"worker died after storing the {k} job's output" for k in ("elicit", "align", "tailor")
               if (tmp_path / f"crashed-{k}").exists()]
    faults.append(f"{OFFLINE} devices offline for round 2")

    # every round completed, each closed once
    history = camp["history"]
    assert [r["round_no"] for r in history] == [1, 2, 3] and all(r["done"] for r in history)
    rounds = server.admin("GET", f"/rounds?cohort_id={cohort}", status=200)
    assert len(rounds) == ROUNDS and all(r["state"] == "closed" for r in rounds)   # no round opened twice
    offline_ids = {agents[i].state.get("device_id") for i in range(OFFLINE)}
    assert history[1]["n_reports"] == DEVICES - OFFLINE
    assert not offline_ids & {rep["device_id"] for rep in server.reports(history[1]["round_id"])}

    # every report stored exactly once
    stored = [rep for r in rounds for rep in server.reports(r["round_id"])]
    per_device_round = Counter((rep["device_id"], rep["round_id"]) for rep in stored)
    assert max(per_device_round.values()) == 1
    delivered = {r["report_id"] for r in sweep.receipts}
    assert delivered == {rep["report_id"] for rep in stored}
    duplicates = sum(1 for r in sweep.receipts if r["duplicate"])
    assert duplicates > 0   # lost answers were re-sent and answered from the stored report
    faults.append(f"{duplicates} answers to reports lost on {DEVICES // 5} devices (re-sent)")
    assert sum(r["n_reports"] for r in history) == len(stored)

    # no step ran twice
    events = camp["events"]
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    done = Counter((e["round_no"], e["step"]) for e in events if e["event"] in ("done", "completed"))
    closed = Counter(e["round_no"] for e in events if e["event"] == "closed")
    for r in history:
        steps = ["elicit", "aggregate", "tailor"] + (["align"] if r["align"] != "below_k" else [])
        assert all(done[(r["round_no"], s)] == 1 for s in steps), (r["round_no"], done)
        assert closed[r["round_no"]] == 1
    jobs = server.admin("GET", f"/jobs?cohort_id={cohort}", status=200)
    succeeded = Counter(j["kind"] for j in jobs if j["state"] == "succeeded")
    assert succeeded["elicit"] == succeeded["aggregate"] == succeeded["tailor"] == ROUNDS
    assert all(j["state"] == "succeeded" for j in jobs), [(j["kind"], j["state"], j["error"]) for j in jobs]
    resumed = [j for j in jobs if (j["result"] or {}).get("resumed")]
    assert {j["kind"] for j in resumed} == {"elicit", "align", "tailor"}   # found their own output
    datasets = server.admin("GET", "/datasets", status=200)
    assert len(datasets) == ROUNDS
    adapters = server.admin("GET", f"/adapters?cohort_id={cohort}", status=200)
    assert len(adapters) == sum(r["align"] == "pairs" for r in history) >= 1

    # the lineage is complete: round -> adapter (and its parent) -> dataset
    by_adapter = {a["adapter_id"]: a for a in adapters}
    by_dataset = {d["dataset_id"]: d for d in datasets}
    parent = None
    for r in history:
        assert r["parent_adapter_id"] == parent and r["round_id"] and r["dataset_id"]
        if r["align"] == "pairs":
            a = by_adapter[r["adapter_id"]]
            assert (a["round_id"], a["parent_id"], a["n_pairs"]) == (r["round_id"], parent, r["n_pairs"])
            assert r["dataset_id"] in a["datasets"] and r["reward_accuracy_after"] == 1.0
            parent = r["adapter_id"]
        assert by_dataset[r["dataset_id"]]["round_id"] == r["round_id"]
        assert r["n_metrics"] > 0 and r["n_kept"] == r["n_metrics"]
    assert server.admin("GET", f"/cohorts/{cohort}", status=200)["adapter_id"] == parent

    elapsed = time.monotonic() - t0
    assert len(faults) == 7 and students.hook is None, faults   # every fault was injected
    figures = {"devices": DEVICES, "rounds": ROUNDS, "faults": len(faults), "worker_restarts": restarts,
               "reports": len(stored), "reports_per_round": [r["n_reports"] for r in history],
               "pairs_per_round": [r["n_pairs"] for r in history],
               "duplicates": duplicates, "late_reports_refused": len(sweep.rejected),
               "network_errors": sweep.network_errors, "campaign_s": round(elapsed_campaign, 1),
               "total_s": round(elapsed, 1)}
    print("\ncampaign soak: " + "; ".join(faults))
    print(f"{'devices':>8}{'rounds':>8}{'faults':>8}{'reports':>9}{'dupes':>7}{'refused':>9}{'time s':>8}")
    print(f"{DEVICES:>8}{ROUNDS:>8}{len(faults):>8}{len(stored):>9}{duplicates:>7}{len(sweep.rejected):>9}"
          f"{elapsed:>8.1f}")
    print(json.dumps(figures))
    for agent in agents:
        agent.state.close()
