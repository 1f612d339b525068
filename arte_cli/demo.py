"""``arte demo``: one full ARTE round on real parts, on this machine, with a summary table and an HTML report.

Contract: :func:`run_demo` starts ``arte-server`` (SQLite, loopback, a free port) and its job worker as child
processes, creates a task from the BIG-bench (or JSONL) file's seed examples, a cohort with k = the number
of devices, and one enrollment token per device; gives every simulated device its own disjoint private
shard of the task (a task.json of its own under the device's directory, never sent anywhere) and enrolls
it with ``edge-agent enroll`` (laptop-CPU profile). Then one round, exactly as a fleet runs it:

1. ``elicit`` job: the teacher writes draft questions and rationales; they open a round;
2. every device runs ``edge-agent run --once`` (all at the same time, as a fleet does, each with its share
   of this machine's cores: :func:`agent_threads`, set by ``edge-agent config set threads``): fetches the drafts, scores them with its student on its
   private validation split, and reports only per-draft counts;
3. ``align`` job: the server pools the reports, builds chosen/rejected pairs and aligns the teacher (DPO,
   LoRA) for the cohort; when the scores separate no pair beyond noise the job ends as ``no_signal``
   (with the numbers: score spread, the drafts' answers, items) and the teacher stays unaligned;
4. ``tailor`` job: the (aligned) teacher writes the cohort's training set (a signed dataset);
5. every device runs ``edge-agent run --once`` again: downloads and verifies the dataset, fine-tunes its
   student with LoRA within its profile, evaluates before/after on its private holdout and keeps the
   adapter only if it is significantly better; the metrics (accuracies only) go back to the server.

With ``rounds`` (``arte demo --rounds N``) the same fleet runs N rounds as a campaign instead
(:mod:`arte_cli.demo_campaign`): the demo creates the campaign and then only lets the devices iterate; the
server's worker elicits, closes, aligns and tailors each round by itself, each round's drafts written by the
teacher with the newest adapter. The summary adds a table of the rounds with their lineage.

Everything the demo shows comes from the server's API (aggregates, job results, metrics) and the agents'
``--json`` output, as an operator would see it. Files go under ``work_dir`` (kept; the report is
``work_dir/report.html``). Before any process starts, :func:`preflight` proves that llama.cpp runs a real
batch on this CPU (:mod:`arte.backends.llama_check`). Children run with faulthandler on and unbuffered
output, and are stopped on return or error. A step that fails raises :class:`DemoError` naming the step and
how its process ended (the signal by name, or the exit status; :mod:`arte.procs`), with its log's last lines.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import click
import httpx

from arte.backends.llama_check import installed_build_record, self_check
from arte.errors import ArteError, ConfigError
from arte.home import model_dir
from arte.models import resolve_model
from arte.privacy import MECHANISMS
from arte.procs import child_env, death_message, log_tail
from arte.prompts import RATIONALE_STYLES
from arte.scoring import DEFAULT_MODE
from arte.tasks import load_task, split_task
from arte_cli.demo_campaign import run_campaign
from arte_cli.demo_report import no_signal, render_summary, write_report
from arte_cli.output import emit, fail

__all__ = ["DemoConfig", "DemoError", "preflight", "run_demo"]

API = "/api/v1"


class DemoError(ArteError):
    """A demo step failed; the message names the step and carries the relevant log tail."""


@dataclass(frozen=True)
class DemoConfig:
    """The demo's size. The defaults fit about ten minutes on two CPU cores with the embedded 135M model.

    Args:
        task: a BIG-bench task.json or JSONL file.
        devices: simulated devices (each with its own private shard); also the cohort's k.
        examples_per_device: private examples per device, split 50/50 into validation (scoring) and holdout.
        seed_examples: public seed examples the teacher imitates (taken out before the shards).
        questions: draft questions the teacher writes; styles: rationale styles per question.
        tailored: questions of the tailored training set.
        dpo_epochs: passes over the preference pairs.
        sft_epochs: not a flag of the device (its profile bounds training); kept for the report.
        threads: CPU threads of every model (None: each device gets the machine's cores divided by the
            devices, which run at the same time; torch and the teacher take the library's default).
        privacy: ``none`` or ``MECHANISM:EPSILON`` (e.g. ``gaussian:2``); devices add local DP noise.
        split_seed: the shards' and every split's seed.
        rounds: None runs one round job by job; N runs N rounds as a campaign (the server drives them).
    """

    task: Path
    work_dir: Path
    model: str = "default"
    devices: int = 3
    examples_per_device: int = 24
    seed_examples: int = 5
    questions: int = 6
    styles: tuple[str, ...] = ("plain", "expert")
    tailored: int = 16
    dpo_epochs: float = 2.0
    threads: int | None = None
    privacy: str = "none"
    split_seed: int = 0
    profile: str = "laptop-cpu"
    timeout_s: float = 3600.0
    rounds: int | None = None

    def __post_init__(self) -> None:
        if self.rounds is not None and (isinstance(self.rounds, bool) or not isinstance(self.rounds, int)
                                        or self.rounds < 1):
            raise ConfigError("rounds", f"must be None or an integer >= 1, got {self.rounds!r}")
        for name, low in (("devices", 1), ("examples_per_device", 4), ("seed_examples", 1), ("questions", 1),
                          ("tailored", 3)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(name, f"must be an integer >= {low}, got {v!r}")

        if not self.styles:
            raise ConfigError("styles", "needs at least one rationale style")
        unknown = [x for x in self.styles if x not in RATIONALE_STYLES]
        if unknown:
            raise ConfigError("styles", f"unknown style(s) {', '.join(unknown)}; known: {', '.join(RATIONALE_STYLES)}")
        if self.dpo_epochs <= 0:
            raise ConfigError("dpo_epochs", f"must be > 0, got {self.dpo_epochs}")
        privacy_policy(self.privacy)


def privacy_policy(spec: str) -> dict[str, Any]:
    """``none`` or ``MECHANISM:EPSILON`` → the cohort's privacy policy (``gaussian`` gets δ = 1e-5)."""
    if spec == "none":
        return {"mechanism": "none"}
    mech, _, eps = spec.partition(":")
    mechanisms = tuple(m for m in MECHANISMS if m != "none")
    try:
        epsilon = float(eps)
    except ValueError:
        epsilon = -1.0
    if mech not in mechanisms or not epsilon > 0:
        raise ConfigError("privacy", f"expected 'none' or MECHANISM:EPSILON with MECHANISM one of "
                                     f"{', '.join(mechanisms)} and EPSILON > 0, got {spec!r}")
    return {"mechanism": mech, "epsilon": epsilon, **({"delta": 1e-5} if mech == "gaussian" else {})}


# -- the private shards ------------------------------------------------------------------------------------------


def _bigbench_example(x: Any) -> dict[str, Any]:
    if x.choices:
        return {"id": x.id, "input": x.input, "target_scores": {c: int(c in x.targets) for c in x.choices}}
    return {"id": x.id, "input": x.input, "target": list(x.targets)}


def make_shards(task_path: Path, out_dir: Path, devices: int, per_device: int, n_seeds: int,
                seed: int) -> tuple[Any, list[dict[str, Any]], list[Path]]:
    """The task, its public seed examples (server format) and one private task.json per device (disjoint)."""

    task = load_task(task_path)
    need = n_seeds + devices * per_device
    if len(task.examples) < need:
        raise ConfigError("examples_per_device", f"{devices} devices x {per_device} examples + {n_seeds} seeds "
                                                 f"need {need} examples; {task_path} has {len(task.examples)}")
    split = split_task(task, seed=seed, n_seeds=n_seeds, validation=devices * per_device, holdout=0)
    seeds = [{k: v for k, v in x.to_dict().items() if k != "id"} for x in split.seeds]
    paths = []
    for i in range(devices):
        shard = split.validation[i * per_device:(i + 1) * per_device]
        doc = {"name": task.name, "description": task.description, "task_prefix": task.task_prefix,
               "example_input_prefix": task.input_prefix, "example_output_prefix": task.output_prefix,
               "examples": [_bigbench_example(x) for x in shard]}
        path = out_dir / f"device-{i + 1}" / "private" / "task.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        paths.append(path)
    return task, seeds, paths


# -- child processes and the admin API ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Fleet:
    """The server, its worker and the admin client; devices are ``edge-agent`` runs with their own state."""

    def __init__(self, cfg: DemoConfig, env: dict[str, str]) -> None:
        self.cfg, self.env = cfg, env
        self.dir = cfg.work_dir
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[tuple[str, str]] = []   # (log name, what it is) of each process, for messages
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = ""
        self.http: Any = None

    # processes
    def _cmd(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def run(self, step: str, module: str, *args: str, timeout: float | None = None) -> dict[str, Any]:
        """Run a command that prints one JSON document; its stderr goes to ``logs/<step>.log``."""
        logf = self.logs / f"{step}.log"
        with open(logf, "ab") as err:
            p = subprocess.run(self._cmd(module, *args), stdout=subprocess.PIPE, stderr=err, env=self.env,
                               timeout=timeout or self.cfg.timeout_s, check=False)
        out = p.stdout.decode("utf-8", errors="replace")
        if p.returncode != 0:
            said = f"\nit printed: {out.strip()[-2000:]}" if out.strip() else ""
            raise DemoError(death_message(f"step {step!r} ({module})", p.returncode, logf) + said)
        try:
            return json.loads(out)
        except ValueError:
            raise DemoError(f"step {step!r} printed no JSON document: {out[-2000:]!r}") from None

    def spawn(self, name: str, what: str, module: str, *args: str) -> None:
        """Start a long-running child (``what`` names it in messages); its output goes to ``logs/<name>.log``."""
        logf = open(self.logs / f"{name}.log", "ab")   # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(self._cmd(module, *args), stdout=logf, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))
        self.names.append((name, what))

    def check_alive(self, during: str) -> None:
        """Raise :class:`DemoError` saying how a spawned child ended (the signal by name, or the status)
        with the last lines of its log."""
        for (name, what), p in zip(self.names, self.procs):
            if p.poll() is not None:
                raise DemoError(death_message(f"{what} (during {during})", p.returncode, self.logs / f"{name}.log"))

    def start(self) -> None:
        init = self.run("server-init", "server.cli", "init", "--json")
        self.admin_key = init["admin_key"]
        self.spawn("server", "arte-server", "server.cli", "serve", "--port", str(self.port), "--no-access-log")
        self.spawn("worker", "the job worker", "server.cli", "worker")
        self.http = httpx.Client(base_url=self.url + API, timeout=30.0,
                                 headers={"Authorization": f"Bearer {self.admin_key}"})
        deadline = time.monotonic() + 60
        while True:
            self.check_alive("start-up")
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"arte-server did not answer on {self.url} within 60 s; last lines of its log:\n"
                                f"{log_tail(self.logs / 'server.log')}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # admin API
    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            raise DemoError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}")
        return r.json()

    def job(self, step: str, body: dict[str, Any], progress: Callable[[float], None]) -> dict[str, Any]:
        """Queue a job and wait for the worker to finish it."""
        job = self.api("POST", "/jobs", json=body)
        deadline = time.monotonic() + self.cfg.timeout_s
        while job["state"] in ("queued", "running"):
            self.check_alive(step)
            if time.monotonic() > deadline:
                raise DemoError(f"job {step} ({job['job_id']}) still {job['state']} after {self.cfg.timeout_s} s")
            time.sleep(1.0)
            job = self.api("GET", f"/jobs/{job['job_id']}")
            progress(job.get("progress") or 0.0)
        if job["state"] != "succeeded":
            logs = self.api("GET", f"/jobs/{job['job_id']}/logs")
            raise DemoError(f"job {step} {job['state']}: {job.get('error')}\n"
                            + "\n".join(str(x.get("message")) for x in logs[-10:]))
        return job


# -- the round ----------------------------------------------------------------------------------------------------


def _env(cfg: DemoConfig) -> dict[str, str]:
    env = child_env()   # faulthandler on, unbuffered (a child's log holds everything up to its death), passive OpenMP
    env.update({"ARTE_SERVER_DATA_DIR": str(cfg.work_dir / "server"), "ARTE_SERVER_TEACHER_MODEL": cfg.model,
                "ARTE_SERVER_DATASET_SIGNING_KEY": env.get("ARTE_DEMO_SIGNING_KEY", secrets.token_hex(32)),
                "ARTE_SERVER_WORKER_POLL_S": "0.5", "ARTE_SERVER_JOB_HEARTBEAT_S": "5",
                "ARTE_SERVER_CAMPAIGN_TICK_S": "1"})
    env.pop("ARTE_SERVER_DATABASE_URL", None)   # the demo's own SQLite database
    if cfg.threads is not None:
        env["OMP_NUM_THREADS"] = str(cfg.threads)
    return env


def preflight(model: str, threads: int | None = None) -> dict[str, Any] | None:
    """Before any process starts: prove the installed llama.cpp build runs a real batch on this CPU (in a
    child process), or raise :class:`DemoError` with the signal, the CPU features and the rebuild command.
    Returns the check's summary; None when ``model`` is not a GGUF file (llama.cpp is not used)."""

    ref = resolve_model(model, model_dir())
    if ref.kind != "gguf":
        return None
    r = self_check(ref.path, n_threads=threads or 1, build_record=installed_build_record())
    if not r.ok:
        raise DemoError(r.message)
    return {"ok": True, "message": r.message, "cpu_features": r.build.get("cpu_features"),
            "gpu_offload": r.build.get("gpu_offload"), "seconds": r.seconds}


def _stage(log: Callable[[str], None], name: str) -> Callable[[], float]:
    t0 = time.monotonic()
    log(f"[{time.strftime('%H:%M:%S')}] {name} ...")
    return lambda: round(time.monotonic() - t0, 1)


def agent_threads(devices: int, threads: int | None = None, cpus: int | None = None) -> int:
    """CPU threads of each simulated device: ``threads`` if given, else this machine's cores shared out
    (the devices run at the same time, as a fleet does; llama.cpp threads that outnumber the cores
    spin-wait on each other, so the total stays at the core count)."""
    if threads is not None:
        return threads
    return max(1, (cpus or os.cpu_count() or 1) // devices)


def _iterate(fleet: _Fleet, devices: list[dict[str, Any]], step: str, part: str,
             prog: Callable[[str, float], None]) -> list[dict[str, Any]]:
    """``edge-agent run --once`` on every device at the same time; ``part`` of each iteration's JSON, in
    the devices' order."""

    finished = 0

    def one(d: dict[str, Any]) -> dict[str, Any]:
        nonlocal finished
        it = fleet.run(f"{d['name']}-{step}", "edge_agent.cli", "--state-dir", d["state_dir"], "run", "--once",
                       "--ignore-conditions", "--json")
        finished += 1
        prog(step, finished / len(devices))
        return {"device": d["name"], **(it.get(part) or {}), "delivery": it.get("delivery")}

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        return list(pool.map(one, devices))


def _elicit_params(cfg: DemoConfig, mode: str) -> dict[str, Any]:
    # 48 reasoning tokens: on the embedded student as many items reach <ans> as with 96, in 70 % of the time
    # (README, "Scoring drafts on a device").
    return {"mode": mode, "max_new_tokens": 48, "min_items": max(1, cfg.examples_per_device // 4),
            "config": {"n_questions": cfg.questions, "styles": list(cfg.styles), "seed": cfg.split_seed,
                       "rationale_max_new_tokens": 160, "question_max_new_tokens": 320, "batch_size": 8}}


def _align_config(cfg: DemoConfig) -> dict[str, Any]:
    return {"epochs": cfg.dpo_epochs, "batch_size": 1, "learning_rate": 5e-5, "max_length": 512,
            "eval_pairs": 8, "logging_steps": 1, "seed": cfg.split_seed}


def _tailor_config(cfg: DemoConfig) -> dict[str, Any]:
    return {"n_questions": cfg.tailored, "seed": cfg.split_seed + 1, "check_samples": 0,
            "rationale_max_new_tokens": 128, "question_max_new_tokens": 256, "batch_size": 8}


def _last_round(fleet: _Fleet, cohort_id: str, doc: dict[str, Any], devices: list[dict[str, Any]]) -> None:
    """The one-round fields of the demo's document (what the report draws), from the campaign's last round."""
    camp = doc["campaign"]
    last = camp["history"][-1]
    doc["round"] = {"round_id": last["round_id"], "n_drafts": None}
    doc["aggregate"] = fleet.api("GET", f"/aggregates/{last['round_id']}")
    jobs = {j["kind"]: j for j in fleet.api("GET", f"/jobs?cohort_id={cohort_id}&state=succeeded")
            if j["round_id"] == last["round_id"] or j["kind"] == "elicit"}
    doc["round"]["n_drafts"] = (jobs.get("elicit") or {}).get("result", {}).get("n_drafts")
    doc["align"] = (jobs.get("align") or {}).get("result") or {"outcome": last["align"], "reason": last["align"]}
    doc["dataset"] = (jobs.get("tailor") or {}).get("result") or {}
    doc["scoring"] = camp["scoring"][-1] if camp["scoring"] else []
    doc["training"] = camp["training"]
    by_id = {d["device_id"]: d["name"] for d in devices}
    doc["metrics"] = [{**m, "device": by_id.get(m["device_id"], m["device_id"])}
                      for m in fleet.api("GET", "/metrics") if m["dataset_id"] == last["dataset_id"]]
    doc["dashboard"] = f"{fleet.url}/dashboard"


def _one_round(fleet: _Fleet, cfg: DemoConfig, cid: str, devices: list[dict[str, Any]], mode: str,
               doc: dict[str, Any], log: Callable[[str], None], prog: Callable[[str, float], None]) -> None:
    """One round, job by job, as an operator would drive it by hand."""
    seconds = doc["seconds"]
    done = _stage(log, f"teacher drafts {cfg.questions} questions x {len(cfg.styles)} rationales (elicit job)")
    elicit = fleet.job("elicit", {"kind": "elicit", "cohort_id": cid, "params": _elicit_params(cfg, mode)},
                       lambda f: prog("elicit", f))
    round_id = elicit["result"]["round_id"]
    doc["round"] = {"round_id": round_id, "n_drafts": elicit["result"]["n_drafts"]}
    seconds["elicit"] = done()

    done = _stage(log, f"{cfg.devices} devices score the drafts on their private validation items")
    doc["scoring"] = _iterate(fleet, devices, "score", "round", prog)
    seconds["score"] = done()
    doc["aggregate"] = fleet.api("GET", f"/aggregates/{round_id}")

    done = _stage(log, "server pools the scores, builds pairs, aligns the teacher with DPO (align job)")
    align = fleet.job("align", {"kind": "align", "cohort_id": cid, "round_id": round_id,
                                "params": {"config": _align_config(cfg)}}, lambda f: prog("align", f))
    doc["align"] = align["result"]
    seconds["align"] = done()
    aligned = not no_signal(doc["align"])
    if not aligned:
        log(f"  {doc['align'].get('reason')}; the round goes on with the unaligned teacher")

    done = _stage(log, f"{'aligned' if aligned else 'unaligned'} teacher writes {cfg.tailored} tailored "
                       f"examples (tailor job)")
    tailor = fleet.job("tailor", {"kind": "tailor", "cohort_id": cid, "round_id": round_id,
                                  "params": {"config": _tailor_config(cfg)}}, lambda f: prog("tailor", f))
    doc["dataset"] = tailor["result"]
    seconds["tailor"] = done()

    done = _stage(log, f"{cfg.devices} devices fine-tune (LoRA), evaluate before/after and keep or reject")
    doc["training"] = _iterate(fleet, devices, "train", "dataset", prog)
    seconds["train"] = done()
    by_id = {d["device_id"]: d["name"] for d in devices}
    doc["metrics"] = [{**m, "device": by_id.get(m["device_id"], m["device_id"])}
                      for m in fleet.api("GET", "/metrics")]
    doc["dashboard"] = f"{fleet.url}/dashboard"


def _campaign(fleet: _Fleet, cfg: DemoConfig, cid: str, devices: list[dict[str, Any]], mode: str,
              doc: dict[str, Any], log: Callable[[str], None], prog: Callable[[str, float], None]) -> None:
    """``cfg.rounds`` rounds as a campaign: the server's worker drives every step, the devices iterate."""
    done = _stage(log, f"a campaign of {cfg.rounds} rounds: the server's worker drives every step, the devices "
                       "iterate")
    p = _elicit_params(cfg, mode)
    policy = {"drafts": p["config"], "mode": mode, "max_new_tokens": p["max_new_tokens"],
              "min_items": p["min_items"], "close_devices": cfg.devices, "align": _align_config(cfg),
              "tailor": _tailor_config(cfg)}
    doc["campaign"] = run_campaign(fleet, cid, cfg.rounds or 1, policy, devices,
                                   lambda step, part: _iterate(fleet, devices, step, part, prog), log,
                                   timeout_s=cfg.timeout_s)
    doc["seconds"]["campaign"] = done()
    _last_round(fleet, cid, doc, devices)


def run_demo(cfg: DemoConfig, *, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
             progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Run the round (see the module docstring); returns the demo's JSON document."""
    t_start = time.monotonic()
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    if (cfg.work_dir / "server").exists() or any(cfg.work_dir.glob("device-*")):
        raise ConfigError("work_dir", f"{cfg.work_dir} holds an earlier demo; give a new or empty directory")
    task, seeds, shards = make_shards(cfg.task, cfg.work_dir, cfg.devices, cfg.examples_per_device,
                                      cfg.seed_examples, cfg.split_seed)

    mode = DEFAULT_MODE   # the student reasons (cot-choice serves exact-match tasks too)
    env = _env(cfg)
    fleet = _Fleet(cfg, env)
    seconds: dict[str, float] = {}
    prog = progress or (lambda _s, _f: None)
    doc: dict[str, Any] = {"config": {**asdict(cfg), "task": str(cfg.task), "work_dir": str(cfg.work_dir)},
                           "task": task.name, "mode": mode, "seconds": seconds}
    done = _stage(log, "checking that llama.cpp runs on this CPU (a real batch, in a child process)")
    doc["llama_cpp"] = preflight(cfg.model, cfg.threads)
    seconds["preflight"] = done()
    try:
        done = _stage(log, "starting arte-server and its job worker")
        fleet.start()
        t = fleet.api("POST", "/tasks", json={"name": task.name, "instruction": task.description or task.name,
                                               "seeds": seeds})
        cohort = fleet.api("POST", "/cohorts", json={"name": f"{task.name}-{cfg.profile}", "task_id": t["task_id"],
                                                     "student_model": cfg.model, "profile_class": cfg.profile,
                                                     "privacy": privacy_policy(cfg.privacy),
                                                     "min_devices": cfg.devices})
        cid = cohort["cohort_id"]
        devices = []
        for i, shard in enumerate(shards):
            token = fleet.api("POST", "/tokens", json={"cohort_id": cid, "note": f"demo device {i + 1}"})
            state = cfg.work_dir / f"device-{i + 1}" / "state"
            e = fleet.run(f"device-{i + 1}-enroll", "edge_agent.cli", "--state-dir", str(state), "enroll",
                          "--server", fleet.url, "--token", token["token"], "--profile", cfg.profile,
                          "--name", f"demo-device-{i + 1}", "--data", str(shard),
                          "--dataset-key", env["ARTE_SERVER_DATASET_SIGNING_KEY"], "--json")
            devices.append({"name": f"demo-device-{i + 1}", "device_id": e["device_id"], "state_dir": str(state),
                            "private_data": str(shard)})
        threads = agent_threads(cfg.devices, cfg.threads)
        for d in devices:
            fleet.run(f"{d['name']}-config", "edge_agent.cli", "--state-dir", d["state_dir"], "config",
                      "set", "threads", str(threads), "--json")
            if cfg.model != "default":
                fleet.run(f"{d['name']}-config", "edge_agent.cli", "--state-dir", d["state_dir"], "config",
                          "set", "model", cfg.model, "--json")
        doc.update(server=fleet.url, cohort_id=cid, devices=devices)
        seconds["setup"] = done()

        if cfg.rounds is not None:
            _campaign(fleet, cfg, cid, devices, mode, doc, log, prog)
        else:
            _one_round(fleet, cfg, cid, devices, mode, doc, log, prog)
    finally:
        fleet.stop()
    seconds["total"] = round(time.monotonic() - t_start, 1)
    (cfg.work_dir / "demo.json").write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    doc["report"] = str(write_report(doc, cfg.work_dir / "report.html"))
    return doc


def clean_work_dir(path: Path) -> None:
    """Remove an earlier demo's files (``--fresh``); refuses a directory that holds anything else."""
    if not path.exists():
        return
    ours = {"server", "logs", "demo.json", "report.html"}
    other = [p.name for p in path.iterdir() if p.name not in ours and not p.name.startswith("device-")]
    if other:
        raise ConfigError("work_dir", f"{path} holds files a demo did not write ({', '.join(sorted(other)[:5])}); "
                                      "--fresh only deletes an earlier demo's directory")
    shutil.rmtree(path)


# -- the command ---------------------------------------------------------------------------------------------------


def _default_task() -> Path:
    """BIG-bench sports_understanding, shipped with the package (Apache-2.0; see data/README.md)."""
    return Path(__file__).resolve().parent / "data" / "sports_understanding.json"


def command() -> Any:
    """The ``arte demo`` click command (built on demand so importing this module stays light)."""

    @click.command("demo")
    @click.option("--task", "task_path", type=click.Path(path_type=Path), default=None,
                  help="BIG-bench task.json or JSONL (default: BIG-bench sports_understanding, shipped).")
    @click.option("--work-dir", type=click.Path(path_type=Path), default=Path("demo-run"), show_default=True,
                  help="Where the server, the devices and the report live.")
    @click.option("--fresh", is_flag=True, help="Delete the work dir of an earlier demo first.")
    @click.option("--model", default="default", show_default=True,
                  help="Teacher and student: 'default', a GGUF file or an HF model directory.")
    @click.option("--devices", default=3, show_default=True, type=click.IntRange(1, 64), help="Simulated devices (= k).")
    @click.option("--examples-per-device", default=24, show_default=True, type=click.IntRange(min=4),
                  help="Private examples per device (half validation, half holdout).")
    @click.option("--questions", default=6, show_default=True, type=click.IntRange(min=1),
                  help="Draft questions the teacher writes.")
    @click.option("--styles", default="plain,expert", show_default=True,
                  help="Comma-separated rationale styles per question (arte.prompts.RATIONALE_STYLES).")
    @click.option("--tailored", default=16, show_default=True, type=click.IntRange(min=3),
                  help="Questions in the tailored training set.")
    @click.option("--dpo-epochs", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Passes of DPO over the preference pairs.")
    @click.option("--privacy", default="none", show_default=True,
                  help="Local DP of the scores: none or MECHANISM:EPSILON (gaussian:2, laplace:4, ...).")
    @click.option("--seed", "split_seed", default=0, show_default=True, help="Seed of the shards and splits.")
    @click.option("--rounds", type=click.IntRange(min=1), default=None,
                  help="Run N rounds as a campaign: the server drives every step, the devices only iterate.")
    @click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    def demo(task_path: Path | None, work_dir: Path, fresh: bool, model: str, devices: int, examples_per_device: int,
             questions: int, styles: str, tailored: int, dpo_epochs: float, privacy: str, split_seed: int,
             rounds: int | None, threads: int | None, as_json: bool) -> None:
        """Run one full ARTE round on this machine (or --rounds N as a campaign): a real server, DEVICES
        agents, a report."""

        try:
            if fresh:
                clean_work_dir(work_dir)
            cfg = DemoConfig(task=task_path or _default_task(), work_dir=work_dir.resolve(), model=model,
                             devices=devices, examples_per_device=examples_per_device, questions=questions,
                             styles=tuple(s.strip() for s in styles.split(",") if s.strip()), tailored=tailored,
                             dpo_epochs=dpo_epochs, privacy=privacy, split_seed=split_seed, threads=threads,
                             rounds=rounds)
            doc = run_demo(cfg)
        except ArteError as e:
            fail(e)
        emit(doc, as_json, render_summary(doc))

    return demo
