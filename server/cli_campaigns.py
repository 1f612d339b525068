"""The ``campaigns``, ``adapters`` and ``service`` command groups of ``arte-server``.

``campaigns create --cohort-id C --rounds 3`` is all an operator types: the workers (``arte-server
worker``) then run the rounds (:mod:`server.driver`). Like :mod:`server.cli_admin`, the commands call the
same functions as the HTTP routes, one transaction per command.
"""

from __future__ import annotations

import getpass
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from arte.errors import ConfigError
from arte.home import model_dir
from arte.scoring import MODE_HELP, MODES
from server import campaigns as cmp
from server import fleet, lineage
from server.campaigns import STATES as campaign_states
from server.cli_common import Ctx, Exit, emit, fail, json_option, run_command, table
from server.service import ServerServiceSpec, enable_commands, render_units

__all__ = ["campaigns", "adapters", "service"]


def _json_opt(name: str, what: str) -> Any:
    return click.option(f"--{name}", default=None, help=f"{what} as a JSON object (see docs/campaigns.md).")


def _parse(value: str | None, option: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e.msg}", param_hint=f"--{option}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", param_hint=f"--{option}")
    return parsed


def _rounds_table(d: dict[str, Any]) -> str:
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    head = (f"campaign {d['campaign_id']} (cohort {d['cohort_id']}): {d['state']}, round {d['round_no']}"
            f"{'/' + str(d['rounds']) if d['rounds'] else ''}, step {d['step']}"
            + (f", job {d['job_id']}" if d.get("job_id") else "")
            + (f"\n  reason: {d['reason']}" if d.get("reason") else ""))
    rows = [{"round": r["round_no"], "reports": r["n_reports"], "align": r["align"] or "-",
             "pairs": num(r["n_pairs"]), "reward acc": f"{num(r['reward_accuracy_before'])}->"
             f"{num(r['reward_accuracy_after'])}", "adapter": r["adapter_id"] or "-",
             "parent": r["parent_adapter_id"] or "base", "dataset": r["dataset_id"] or "-",
             "examples": num(r["dataset_examples"]), "kept": f"{r['n_kept']}/{r['n_metrics']}",
             "0-shot": f"{num(r['before_zero_shot'])}->{num(r['after_zero_shot'])}"} for r in d["history"]]
    events = [f"  v{e['version']} {e['event']}: {e['message']}" for e in d.get("events") or []]
    cols = ["round", "reports", "align", "pairs", "reward acc", "adapter", "parent", "dataset", "examples", "kept",
            "0-shot"]
    return "\n".join([head, table(rows, cols), *(["events:", *events] if events else [])])


# --- campaigns ----------------------------------------------------------------------------------------


@click.group()
def campaigns() -> None:
    """Campaigns: a cohort's rounds, run by the workers with nobody at the keyboard."""


@campaigns.command("create")
@click.option("--cohort-id", required=True, help="The cohort whose rounds the campaign runs.")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Rounds to run.")
@click.option("--forever", is_flag=True, help="Run rounds until stopped (or until the stop rule fires).")
@click.option("--questions", type=click.IntRange(min=1), default=None, help="Draft questions per round.")
@click.option("--styles", default=None, help="Comma-separated rationale styles per question.")
@click.option("--mode", type=click.Choice(MODES), default=None, help=f"Scoring mode. {MODE_HELP}")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Generation budget per item.")
@click.option("--min-items", type=click.IntRange(min=1), default=None, help="Fewest items a device must score.")
@click.option("--close-devices", type=click.IntRange(min=1), default=None,
              help="Close a round when this many devices reported (default: the cohort's k).")
@click.option("--deadline-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Close a round this many seconds after it opened, whoever reported.")
@click.option("--max-failures", type=click.IntRange(min=1), default=None,
              help="Failed jobs in a row of one step that pause the campaign (default 3).")
@click.option("--stop-if-kept-below", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Stop when fewer than this share of devices kept the previous round's adapter.")
@click.option("--teacher-without-adapter", is_flag=True,
              help="Write each round's drafts with the base teacher, not the cohort's newest adapter.")
@_json_opt("drafts-config", "ElicitConfig")
@_json_opt("align-config", "AlignConfig (DPO)")
@_json_opt("pairs-config", "PairConfig")
@_json_opt("tailor-config", "TailorConfig")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A JSON policy file (the options above override its fields).")
@json_option
@click.pass_obj
def campaigns_create(obj: Ctx, cohort_id: str, rounds: int | None, forever: bool, questions: int | None,
                     styles: str | None, mode: str | None, max_new_tokens: int | None, min_items: int | None,
                     close_devices: int | None, deadline_s: float | None, max_failures: int | None,
                     stop_if_kept_below: float | None, teacher_without_adapter: bool, drafts_config: str | None,
                     align_config: str | None, pairs_config: str | None, tailor_config: str | None,
                     policy_path: Path | None, as_json: bool) -> None:
    """Start a campaign for a cohort (give --rounds N or --forever)."""

    if (rounds is None) == (not forever):
        raise click.UsageError("give exactly one of --rounds N and --forever")
    policy: dict[str, Any] = json.loads(policy_path.read_text(encoding="utf-8")) if policy_path else {}
    for key, value in (("drafts", _parse(drafts_config, "drafts-config")),
                       ("align", _parse(align_config, "align-config")),
                       ("pairs", _parse(pairs_config, "pairs-config")),
                       ("tailor", _parse(tailor_config, "tailor-config"))):
        if value is not None:
            policy[key] = value
    drafts = dict(policy.get("drafts") or {})
    if questions is not None:
        drafts["n_questions"] = questions
    if styles is not None:
        drafts["styles"] = [x.strip() for x in styles.split(",") if x.strip()]
    policy["drafts"] = drafts
    for key, value in (("mode", mode), ("max_new_tokens", max_new_tokens), ("min_items", min_items),
                       ("close_devices", close_devices), ("deadline_s", deadline_s), ("max_failures", max_failures),
                       ("stop_if_kept_below", stop_if_kept_below)):
        if value is not None:
            policy[key] = value
    if teacher_without_adapter:
        policy["elicit_with_adapter"] = False

    def fn(s: Any, now: Any) -> Any:
        body = cmp.CampaignIn(cohort_id=cohort_id, rounds=rounds, policy=policy)
        return cmp.campaign_out(s, cmp.create_campaign(s, body, now), events=10)

    run_command(obj, as_json, fn, _rounds_table)


@campaigns.command("list")
@click.option("--cohort-id", default=None, help="Only campaigns of this cohort.")
@click.option("--state", type=click.Choice(campaign_states), default=None,
              help="Only campaigns in this state.")
@json_option
@click.pass_obj
def campaigns_list(obj: Ctx, cohort_id: str | None, state: str | None, as_json: bool) -> None:
    """List campaigns."""

    run_command(obj, as_json,
         lambda s, now: [cmp.campaign_out(s, c) for c in cmp.list_campaigns(s, cohort_id=cohort_id, state=state)],
         lambda d: table(d, ["campaign_id", "cohort_id", "state", "round_no", "rounds", "step", "failures"]))


@campaigns.command("show")
@click.argument("campaign_id")
@click.option("--events", type=click.IntRange(0, 1000), default=20, show_default=True,
              help="Newest transitions to show.")
@json_option
@click.pass_obj
def campaigns_show(obj: Ctx, campaign_id: str, events: int, as_json: bool) -> None:
    """Show a campaign: its rounds (lineage and figures) and its newest transitions."""

    run_command(obj, as_json, lambda s, now: cmp.campaign_out(s, cmp.get_campaign(s, campaign_id), events=events),
         _rounds_table)


def _action(name: str, doc: str) -> None:
    @campaigns.command(name, help=doc)
    @click.argument("campaign_id")
    @json_option
    @click.pass_obj
    def command(obj: Ctx, campaign_id: str, as_json: bool) -> None:
        act = getattr(cmp, name)
        run_command(obj, as_json, lambda s, now: cmp.campaign_out(s, act(s, campaign_id, now), events=5), _rounds_table)


_action("pause", "Pause a campaign (the job in flight finishes; nothing new starts).")
_action("resume", "Resume a paused campaign where it stopped.")
_action("stop", "Stop a campaign for good (cancels its job in flight).")


# --- adapters -----------------------------------------------------------------------------------------


@click.group()
def adapters() -> None:
    """Teacher adapters: lineage per cohort, rollback."""


def _adapter_row(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "lineage": " <- ".join([d["adapter_id"], *d["lineage"], "base"]),
            "current": "*" if d["current"] else ""}


@adapters.command("list")
@click.option("--cohort-id", default=None, help="Only adapters of this cohort.")
@json_option
@click.pass_obj
def adapters_list(obj: Ctx, cohort_id: str | None, as_json: bool) -> None:
    """List adapters with their round, pairs and lineage (* marks each cohort's current one)."""

    run_command(obj, as_json, lambda s, now: [lineage.adapter_out(s, a) for a in lineage.list_adapters(s, cohort_id)],
         lambda d: table([_adapter_row(x) for x in d],
                          ["current", "adapter_id", "cohort_id", "round_id", "n_pairs", "lineage"]))


@adapters.command("show")
@click.argument("adapter_id")
@json_option
@click.pass_obj
def adapters_show(obj: Ctx, adapter_id: str, as_json: bool) -> None:
    """Show one adapter."""

    run_command(obj, as_json, lambda s, now: lineage.adapter_out(s, lineage.get_adapter(s, adapter_id)))


@adapters.command("rollback")
@click.option("--cohort-id", required=True, help="The cohort to roll back.")
@click.option("--adapter-id", default=None, help="An earlier adapter of the cohort.")
@click.option("--base", is_flag=True, help="Back to the base teacher (no adapter).")
@json_option
@click.pass_obj
def adapters_rollback(obj: Ctx, cohort_id: str, adapter_id: str | None, base: bool, as_json: bool) -> None:
    """Make an earlier adapter the cohort's adapter again (the next tailor and elicit jobs use it)."""

    if (adapter_id is None) == (not base):
        raise click.UsageError("give exactly one of --adapter-id ID and --base")
    run_command(obj, as_json, lambda s, now: fleet.cohort_out(s, lineage.rollback(s, cohort_id, adapter_id)),
         lambda d: f"cohort {d['cohort_id']} now uses adapter {d['adapter_id'] or 'none (base teacher)'}")


# --- service ------------------------------------------------------------------------------------------


@click.group()
def service() -> None:
    """Run the server and its workers as systemd services."""


@service.command("install")
@click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Where to write the unit files (any directory you can write; no root needed).")
@click.option("--user", default=None, help="Account the services run as (default: the current user).")
@click.option("--exec", "exec_path", type=click.Path(path_type=Path), default=None,
              help="The arte-server executable (default: this one).")
@click.option("--env-file", type=click.Path(path_type=Path), default=None,
              help="EnvironmentFile= with ARTE_SERVER_* settings (absolute path; e.g. the database URL).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API binds.")
@click.option("--port", type=click.IntRange(1, 65535), default=8700, show_default=True, help="Port the API binds.")
@click.option("--api-workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="uvicorn processes of the API.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Job worker instances to enable (several want PostgreSQL).")
@click.option("--write-path", "write_paths", multiple=True, type=click.Path(path_type=Path),
              help="Another directory the services may write (repeatable; the model dir is added).")
@click.option("--worker-memory-max-mib", type=click.IntRange(min=64), default=None,
              help="MemoryMax= of each worker (an align job past it is killed and retried after a backoff).")
@json_option
@click.pass_obj
def service_install(obj: Ctx, unit_dir: Path, user: str | None, exec_path: Path | None, env_file: Path | None,
                    host: str, port: int, api_workers: int, workers: int, write_paths: tuple[Path, ...],
                    worker_memory_max_mib: int | None, as_json: bool) -> None:
    """Write arte-server.service and arte-server-worker@.service and print the commands that enable them."""

    settings = obj.settings()
    if exec_path is None:
        found = shutil.which("arte-server")
        exec_path = Path(found).resolve() if found else Path(sys.argv[0]).resolve()
    warnings = []
    if workers > 1 and not (settings.database_url or "").startswith("postgresql"):
        warnings.append(f"{workers} workers on SQLite take turns at the write lock; PostgreSQL lets them work at once"
                        " (set ARTE_SERVER_DATABASE_URL in the env file)")
    if env_file is not None and not env_file.exists():
        warnings.append(f"env file {env_file} does not exist yet: create it before starting the services")
    try:
        spec = ServerServiceSpec(exec_path=exec_path, data_dir=Path(settings.data_dir).expanduser().resolve(),
                                 user=user or getpass.getuser(), env_file=env_file, host=host, port=port,
                                 api_workers=api_workers, workers=workers,
                                 write_paths=(model_dir().resolve(), *write_paths),
                                 worker_memory_max_mib=worker_memory_max_mib)
        units = render_units(spec)
        unit_dir.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (unit_dir / name).write_text(text, encoding="utf-8")
    except ConfigError as e:
        fail(as_json, Exit.REFUSED, "bad_request", str(e), {"field": e.field})
    except OSError as e:
        fail(as_json, Exit.REFUSED, "bad_request", f"cannot write to {unit_dir}: {e.strerror}",
              {"field": "unit_dir"})
    commands = enable_commands(unit_dir.resolve(), workers)
    data = {"unit_dir": str(unit_dir.resolve()), "units": units, "commands": commands, "warnings": warnings}
    emit(as_json, data, lambda d: "\n".join([f"wrote {unit_dir.resolve() / n}" for n in d["units"]]
                                             + [f"warning: {w}" for w in warnings] + ["to enable them, run:"]
                                             + [f"  {c}" for c in commands]))
