"""``edge-agent``: the device agent's command line (one click group).

Commands: ``enroll``, ``doctor``, ``score``, ``run``, ``status``, ``config show|set|unset``,
``service install``. Every data command takes ``--json`` and then prints exactly one JSON document on
stdout; progress bars and logs go to stderr. Errors are converted to exit codes once, here
(:func:`edge_agent.errors.exit_code_for`; the table is in ``--help``). The commands parse options and
print; the work lives in the modules they call (enroll, doctor, loop, status, config, service,
train_step). llama.cpp and torch load only when a command runs a model, so ``edge-agent --help`` stays light.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from tqdm import tqdm

import arte
from arte.backends import BACKENDS, LOCAL_BACKENDS, open_student
from arte.backends.llama_check import installed_build_record, self_check
from arte.drafts import read_drafts
from arte.errors import ArteError, ConfigError
from arte.exit_codes import render
from arte.home import convert_dir, model_dir
from arte.models import resolve_model
from arte.retry import RetryPolicy
from arte.scoring import DEFAULT_MODE, MODE_HELP, MODES, ScoringConfig, check_items, score_drafts
from arte.tasks import label_counts, load_task, split_task
from edge_agent import service as svc
from edge_agent.client import ServerClient
from edge_agent.config import SETTABLE, validate_setting
from edge_agent.doctor import Check, run_checks
from edge_agent.enroll import enroll as enroll_device
from edge_agent.errors import AgentError, ExitCode, exit_code_for
from edge_agent.hardware import detect
from edge_agent.loop import Agent, Iteration, run_forever, run_once
from edge_agent.settings import AgentSettings
from edge_agent.state import DB_NAME, State, utc_now
from edge_agent.status import status as agent_status
from edge_agent.status import status_lines
from edge_agent.student import open_profile_student
from edge_agent.train_step import TrainOptions, run_train, train_step
from firmware_profiles import PROFILE_DIR, ProfileError, load_profile


def fail(err: Exception) -> NoReturn:
    """Print the error to stderr and exit with its code."""
    click.echo(f"error: {err}", err=True)
    sys.exit(int(exit_code_for(err)))


def emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(render(data, as_json, human))


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="\b\nExit codes:\n" + ExitCode.help_text())
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="State dir (default: $EDGE_AGENT_STATE_DIR or ~/.cache/arte-edge/agent).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
@click.pass_context
def main(ctx: click.Context, state_dir: Path | None, verbose: bool) -> None:
    """ARTE edge agent: scores teacher drafts on this device's private data and fine-tunes the student."""
    ctx.obj = {"state_dir": state_dir, "verbose": verbose}


@main.command()
@click.option("--task", "task_path", required=True, type=click.Path(path_type=Path),
              help="The device's labelled data: a BIG-bench task.json or JSONL file (never sent anywhere).")
@click.option("--drafts", "drafts_path", required=True, type=click.Path(path_type=Path),
              help="Teacher drafts, JSONL with id, question, rationale, answer.")
@click.option("--model", "model", default="default", show_default=True,
              help="'default', a .gguf file or a Hugging Face model directory.")
@click.option("--backend", type=click.Choice(BACKENDS), default="llama", show_default=True,
              help="Model runtime.")
@click.option("--mode", type=click.Choice(MODES), default=DEFAULT_MODE, show_default=True, help=MODE_HELP)
@click.option("--items", "n_items", type=click.IntRange(min=1), default=None,
              help="Score on at most this many validation items (default: all).")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the validation/holdout split.")
@click.option("--validation", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of the data used for scoring; the rest is the holdout.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all).")
@click.option("--max-new-tokens", default=96, show_default=True, type=click.IntRange(1, 4096),
              help="Generation budget per item in the reasoning modes (cot-choice: the reasoning budget).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def score(task_path: Path, drafts_path: Path, model: str, backend: str, mode: str, n_items: int | None,
          split_seed: int, validation: float, threads: int | None, max_new_tokens: int, as_json: bool) -> None:
    """Score drafts locally by the student's one-shot accuracy; prints scores only."""

    try:
        cfg = ScoringConfig(mode=mode, max_new_tokens=max_new_tokens)
        task = load_task(task_path)
        items = list(split_task(task, seed=split_seed, n_seeds=0, validation=validation).validation)
        items = items[:n_items] if n_items else items
        drafts = read_drafts(drafts_path)
        check_items(items, mode)
        ref = resolve_model(model, model_dir())
        student = open_student(ref, backend, n_threads=threads, convert_dir=convert_dir())
        try:
            with tqdm(total=len(drafts) * len(items), desc="scoring", unit="item", file=sys.stderr,
                      disable=None) as bar:
                result = score_drafts(student, task, drafts, items, cfg, progress=bar.update)
            tokens = getattr(student, "tokens_evaluated", None)
        finally:
            student.close()
    except ArteError as e:
        fail(e)
    data = {"task": task.name, "mode": mode, "model": ref.name, "backend": backend, "n_items": len(items),
            "labels": label_counts(items), "seconds": round(result.stats["seconds"], 3), "tokens_evaluated": tokens,
            "scores": [{"draft_id": s.draft_id, "n_items": s.n_items, "n_correct": s.n_correct,
                        "accuracy": round(s.accuracy, 4)} for s in result.scores]}
    lines = [f"{task.name}: {len(drafts)} drafts x {len(items)} items, mode {mode}, "
             f"{data['seconds']} s", f"{'draft':30} correct/items  accuracy"]
    lines += [f"{s.draft_id[:30]:30} {s.n_correct:>7}/{s.n_items:<5} {s.accuracy:8.3f}" for s in result.scores]
    emit(data, as_json, "\n".join(lines))


# -- shared plumbing of the agent commands ------------------------------------------------------------------


def _settings(ctx: click.Context) -> Any:
    """Process settings (env ``EDGE_AGENT_*``), with ``--state-dir`` on top; configures stderr logging."""

    try:
        settings = AgentSettings()
    except ValueError as e:  # pydantic's ValidationError names the variable
        click.echo(f"error: invalid EDGE_AGENT_* setting: {e}", err=True)
        sys.exit(int(ExitCode.INPUT))
    if ctx.obj.get("state_dir") is not None:
        settings = settings.model_copy(update={"state_dir": ctx.obj["state_dir"]})
    level = logging.DEBUG if ctx.obj.get("verbose") else getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not ctx.obj.get("verbose"):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is debug detail
    return settings


def _client(settings: Any, state: Any, device_key: str | None, server_url: str | None = None) -> Any:
    def contact() -> None:
        if not state.read_only:
            state.set(last_contact_at=utc_now())

    url = server_url or state.require("server_url")
    return ServerClient(url, device_key, timeout=settings.timeout_s,
                        retry=RetryPolicy(settings.retries, settings.retry_base_s, settings.retry_max_s),
                        on_contact=contact)


def _profile(state: Any, settings: Any) -> Any:
    pid = state.require("profile")
    path = PROFILE_DIR / f"{pid}.toml"
    if not path.is_file():
        raise ProfileError(path, "id", f"profile {pid!r} is configured but not installed; "
                                       "`edge-agent config set profile ID`")
    profile = load_profile(path)
    threads = state.get("threads")   # `edge-agent config set threads N` overrides the profile's
    if threads:

        profile = dataclasses.replace(profile, runtime=dataclasses.replace(profile.runtime, threads=int(threads)))
    return profile


# -- enroll ---------------------------------------------------------------------------------------------------


@main.command()
@click.option("--server", "server_url", required=True, help="The fleet server's base URL, e.g. http://host:8700.")
@click.option("--token", required=True, help="One-time enrollment token from the fleet operator.")
@click.option("--profile", "profile_id", default=None,
              help="Firmware profile id (default: auto-detected; see `edge-agent doctor`).")
@click.option("--name", "device_name", default=None, help="Device name shown to the operator (default: hostname).")
@click.option("--data", "data_path", type=click.Path(path_type=Path), default=None,
              help="The private labelled data (BIG-bench task.json or JSONL). Stays on this device.")
@click.option("--dataset-key", default=None, help="Hex key that verifies signed datasets (the server's "
              "dataset_signing_key), if the fleet signs them.")
@click.option("--force", is_flag=True, help="Replace an existing enrollment in this state dir.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def enroll(ctx: click.Context, server_url: str, token: str, profile_id: str | None, device_name: str | None,
           data_path: Path | None, dataset_key: str | None, force: bool, as_json: bool) -> None:
    """Enroll this device with a fleet server (one-time token) and store its identity locally."""
    settings = _settings(ctx)
    try:
        with State(settings.state_dir) as st:
            data = enroll_device(st, lambda: _client(settings, st, None, server_url), detect(settings.root),
                                 server_url=server_url, token=token, profile_id=profile_id, device_name=device_name,
                                 data_path=data_path, dataset_key=dataset_key, force=force)
    except (AgentError, ArteError) as e:
        fail(e)
    data["state_dir"] = str(settings.state_dir)
    emit(data, as_json, f"enrolled as device {data['device_id']} (cohort {data['cohort_id']}, profile "
                        f"{data['profile']}); key in {data['key_file']} (mode 0600)")


# -- doctor ---------------------------------------------------------------------------------------------------


@main.command()
@click.option("--offline", is_flag=True, help="Do not contact the server.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def doctor(ctx: click.Context, offline: bool, as_json: bool) -> None:
    """Check this device: hardware and profile, runtimes, the llama.cpp build (a real batch in a child
    process, compared with the profile), model, disk, memory, state, data, server."""

    settings = _settings(ctx)

    def probe(st: Any) -> Check:
        try:
            with _client(settings.model_copy(update={"retries": 1}), st, st.read_device_key()) as client:
                client.retry = RetryPolicy(attempts=1)
                info = client.device_info()
        except AgentError as e:
            return Check("server", "fail", str(e), "check the network and the server URL, or re-enroll")
        return Check("server", "ok", f"reached; the server knows device {info.device_id} "
                                     f"(cohort {info.cohort_id}, profile {info.profile_id})")

    hw = detect(settings.root)
    checks = run_checks(hw=hw, state_dir=settings.state_dir, probe_server=None if offline else probe,
                        llama_check=_llama_check(Path(settings.root)))
    failed = [c for c in checks if c.status == "fail"]
    llama = next((c.data for c in checks if c.name == "llama_cpp.build" and c.data), None)
    data = {"ok": not failed, "hardware": hw.to_dict(), "llama_cpp": llama, "checks": [c.to_dict() for c in checks]}
    mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for c in checks:
        lines.append(f"[{mark[c.status]}] {c.name}: {c.detail}")
        if c.fix:
            lines.append(f"       fix: {c.fix}")
    lines.append("ready" if not failed else f"{len(failed)} problem(s) to fix")
    emit(data, as_json, "\n".join(lines))
    if failed:
        sys.exit(int(ExitCode.CHECKS))


def _llama_check(root: Path) -> Any:
    """The llama.cpp self-check, reading this device's cpuinfo under ``root`` and the installed build record."""

    return functools.partial(self_check, cpuinfo_path=root / "proc" / "cpuinfo", build_record=installed_build_record())


# -- run ------------------------------------------------------------------------------------------------------


@main.command()
@click.option("--once", is_flag=True, help="Do one iteration and exit.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Stop after this many iterations (default: run until stopped).")
@click.option("--ignore-conditions", is_flag=True,
              help="Work even when the profile says wait (busy, on battery, hot).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (with --once or --iterations).")
@click.pass_context
def run(ctx: click.Context, once: bool, iterations: int | None, ignore_conditions: bool, as_json: bool) -> None:
    """Run the loop: score the round's drafts, report scores, fetch data, fine-tune, report metrics."""

    if once:
        iterations = 1
    if as_json and iterations is None:
        raise click.UsageError("--json needs --once or --iterations (a forever loop prints no single document)")
    settings = _settings(ctx)
    done: list[dict[str, Any]] = []

    def report(it: Any) -> None:
        entry = it.to_dict() if isinstance(it, Iteration) else {"error": str(it)}
        done.append(entry)
        click.echo(f"iteration: {json.dumps(entry, default=str)}", err=True)

    try:
        with State(settings.state_dir) as st:
            profile = _profile(st, settings)
            model = st.get("model", "default")
            with _client(settings, st, st.read_device_key()) as client:
                agent = Agent(state=st, client=client, profile=profile, open_student=_student_opener(model),
                              train=train_step, detect=lambda: detect(settings.root),
                              ignore_conditions=ignore_conditions, model=model,
                              agent_version=arte.__version__)
                if iterations == 1:
                    report(run_once(agent))
                else:
                    run_forever(agent, poll_seconds=settings.poll_s, max_poll_seconds=settings.max_poll_s,
                                iterations=iterations, on_iteration=report)
    except (AgentError, ArteError) as e:
        fail(e)
    if as_json:
        emit(done[0] if once else done, True, "")
    if once and (done[0].get("round") or {}).get("budget"):
        click.echo(f"error: {done[0]['round']['reason']}", err=True)
        sys.exit(int(ExitCode.BUDGET))


def _student_opener(model: str) -> Any:
    def open_student(profile: Any, adapter: str | None) -> Any:
        return open_profile_student(model, profile, adapter)

    return open_student


# -- status ---------------------------------------------------------------------------------------------------


@main.command()
@click.option("--limit", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many sent messages to show.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def status(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Show the agent's state, its last contact and exactly what it last sent."""
    settings = _settings(ctx)
    try:
        with State(settings.state_dir) as st:
            data = agent_status(st, limit)
    except (AgentError, ArteError) as e:
        fail(e)
    emit(data, as_json, status_lines(data))


# -- config ---------------------------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Show or change local settings (data path, profile, model, split, dataset key)."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the local settings (the dataset key is masked)."""

    settings = _settings(ctx)
    try:
        with State(settings.state_dir) as st:
            conf = st.settings()
    except AgentError as e:
        fail(e)
    if "dataset_key" in conf:
        conf["dataset_key"] = "<set>"
    emit(conf, as_json, "\n".join(f"{k} = {v}" for k, v in conf.items()) or "(no settings)")


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--json", "as_json", is_flag=True, help="Print {key, value} as JSON.")
@click.pass_context
def config_set(ctx: click.Context, key: str, value: str, as_json: bool) -> None:
    """Set KEY to VALUE (keys: see `edge_agent.config.SETTABLE`); the value is checked first."""

    settings = _settings(ctx)
    try:
        checked = validate_setting(key, value)
        with State(settings.state_dir) as st:
            st.set(**{key: checked})
    except (AgentError, ArteError) as e:
        fail(e)
    shown = checked if key != "dataset_key" else "<set>"
    if as_json:
        click.echo(json.dumps({"key": key, "value": shown}))
    else:
        click.echo(f"{key} = {shown}")


@config.command("unset")
@click.argument("key")
@click.pass_context
def config_unset(ctx: click.Context, key: str) -> None:
    """Remove KEY from the local settings."""

    if key not in SETTABLE:
        raise click.BadParameter(f"one of {', '.join(SETTABLE)}", param_hint="KEY")
    settings = _settings(ctx)
    try:
        with State(settings.state_dir) as st:
            st.set(**{key: None})
    except AgentError as e:
        fail(e)
    click.echo(f"{key} unset")


# -- service --------------------------------------------------------------------------------------------------


@main.group()
def service() -> None:
    """Run the agent as a systemd service."""


@service.command("install")
@click.option("--output", "unit_path", type=click.Path(path_type=Path), default=Path("edge-agent.service"),
              show_default=True, help="Where to write the unit file (any path you can write; no root needed).")
@click.option("--user", "user", default=None, help="Account the service runs as (default: the current user).")
@click.option("--env-file", type=click.Path(path_type=Path), default=None,
              help="EnvironmentFile= with EDGE_AGENT_* settings (absolute path).")
@click.option("--exec", "exec_path", type=click.Path(path_type=Path), default=None,
              help="The edge-agent executable (default: this one).")
@click.option("--working-dir", type=click.Path(path_type=Path), default=None, help="WorkingDirectory= (absolute).")
@click.option("--name", default="edge-agent", show_default=True, help="Unit name.")
@click.option("--memory-max-mib", type=click.IntRange(min=64), default=None,
              help="MemoryMax= (default: the enrolled profile's memory budget plus a quarter).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def service_install(ctx: click.Context, unit_path: Path, user: str | None, env_file: Path | None,
                    exec_path: Path | None, working_dir: Path | None, name: str, memory_max_mib: int | None,
                    as_json: bool) -> None:
    """Write a hardened systemd unit (Restart=on-failure, read-only system but the state dir, MemoryMax
    from the profile's budget) and print the commands that enable it."""
    settings = _settings(ctx)
    if exec_path is None:
        found = shutil.which("edge-agent")
        exec_path = Path(found).resolve() if found else Path(sys.argv[0]).resolve()
    state_dir = Path(settings.state_dir).expanduser().resolve()
    warnings = []
    if memory_max_mib is None and (state_dir / DB_NAME).exists():
        try:
            with State(state_dir) as st:
                memory_max_mib = svc.memory_max_mib(_profile(st, settings).budget.memory_mib)
        except (AgentError, ArteError) as e:
            warnings.append(f"no MemoryMax: {e}; pass --memory-max-mib")
    elif memory_max_mib is None:
        warnings.append(f"no MemoryMax: {state_dir} holds no enrolled agent yet (enroll first, or pass "
                        "--memory-max-mib)")
    try:
        spec = svc.ServiceSpec(exec_path=exec_path, state_dir=state_dir, user=user or getpass.getuser(), name=name,
                               env_file=env_file, working_dir=working_dir, memory_max_mib=memory_max_mib,
                               write_paths=(model_dir().resolve(),))
        text = svc.render_unit(spec)
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(text)
    except ConfigError as e:
        fail(e)
    except OSError as e:
        click.echo(f"error: cannot write {unit_path}: {e.strerror}", err=True)
        sys.exit(int(ExitCode.INPUT))
    commands = svc.enable_commands(unit_path.resolve(), name)
    if env_file is not None and not env_file.exists():
        warnings.append(f"env file {env_file} does not exist yet: create it before starting the service")
    data = {"unit_path": str(unit_path.resolve()), "unit": text, "commands": commands, "warnings": warnings}
    human = [f"wrote {unit_path.resolve()}", *[f"warning: {w}" for w in warnings], "to enable it, run:",
             *[f"  {c}" for c in commands]]
    emit(data, as_json, "\n".join(human))


# -- train ----------------------------------------------------------------------------------------------------


@main.command()
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Tailored training data: JSONL with id, question, rationale, answer per line.")
@click.option("--task", "task_path", required=True, type=click.Path(path_type=Path),
              help="The device's labelled data (task.json or JSONL): its holdout split judges the adapter.")
@click.option("--model", "model", default="default", show_default=True,
              help="'default', a .gguf file or a Hugging Face model directory.")
@click.option("--adapters", "adapters_dir", type=click.Path(path_type=Path), default=None,
              help="Adapter store directory (default: $ARTE_HOME/adapters).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoints of this job (default: under $ARTE_HOME/sft-work, keyed by data and settings); "
                   "rerunning the same command resumes from it.")
@click.option("--backend", type=click.Choice(LOCAL_BACKENDS), default="llama", show_default=True,
              help="Runtime of the before/after evaluation.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps (default: --epochs).")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1), help="Passes over the data.")
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate (AdamW, warm-up then cosine).")
@click.option("--rank", default=8, show_default=True, type=click.IntRange(min=1), help="LoRA rank.")
@click.option("--lora-alpha", default=16.0, show_default=True, type=float, help="LoRA alpha (scale alpha/rank).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Packed rows per optimizer step.")
@click.option("--max-length", default=256, show_default=True, type=click.IntRange(min=8),
              help="Tokens per packed row; longer records are left out.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of training; then the job checkpoints and stops (status incomplete; rerun to resume).")
@click.option("--memory-budget", type=click.IntRange(min=1), default=None,
              help="MiB of resident memory for training; picks micro-batches (and checkpointing) to fit.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Training matmuls: bf16 (adapter, optimizer and loss stay fp32; the adapter file is the same "
                   "format), fp32, or auto: bf16 where the CPU has native bf16 (avx512_bf16, amx_bf16).")
@click.option("--holdout", "n_holdout", type=click.IntRange(min=1), default=None,
              help="Evaluate on at most this many holdout items (default: all).")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the validation/holdout split.")
@click.option("--validation", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Share of the task used for scoring drafts; the rest is the holdout.")
@click.option("--eval-mode", type=click.Choice(MODES), default=DEFAULT_MODE, show_default=True, help=MODE_HELP)
@click.option("--shots", default="0,3", show_default=True, help="Comma-separated shot counts to evaluate.")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1, 4096),
              help="Generation budget per holdout item.")
@click.option("--significance", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Keep the adapter only if the one-sided exact McNemar p-value (0-shot) is at most this.")
@click.option("--min-gain", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="...and its accuracy gain exceeds this fraction.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def train(data_path: Path, task_path: Path, model: str, adapters_dir: Path | None, work_dir: Path | None,
          backend: str, steps: int | None, epochs: int, lr: float, rank: int, lora_alpha: float, batch_size: int,
          max_length: int, threads: int | None, time_budget: float | None, memory_budget: int | None, precision: str,
          n_holdout: int | None, split_seed: int, validation: float, eval_mode: str, shots: str,
          max_new_tokens: int, significance: float, min_gain: float, as_json: bool) -> None:
    """Fine-tune the student with LoRA on tailored data, evaluate before/after on the local holdout, and
    activate the new adapter only if it is better. Prints the verdict and accuracies."""

    try:
        shot_counts = tuple(int(x) for x in shots.split(",") if x.strip())
    except ValueError:
        fail(ConfigError("shots", f"expected comma-separated integers, got {shots!r}"))
    opts = TrainOptions(data=data_path, task=task_path, model=model, adapters_dir=adapters_dir, work_dir=work_dir,
                        backend=backend, steps=steps, epochs=epochs, lr=lr, rank=rank, lora_alpha=lora_alpha,
                        batch_size=batch_size, max_length=max_length, threads=threads, time_budget=time_budget,
                        memory_budget=memory_budget, precision=precision, holdout=n_holdout, split_seed=split_seed,
                        validation=validation, eval_mode=eval_mode, shots=shot_counts,
                        max_new_tokens=max_new_tokens, significance=significance, min_gain=min_gain)
    try:
        data, human = run_train(opts)
    except ArteError as e:
        fail(e)
    emit(data, as_json, human)

if __name__ == "__main__":  # pragma: no cover
    main()
