"""The admin command groups of ``arte-server`` (tasks, cohorts, tokens, rounds, aggregates, jobs,
devices).

They call the same functions as the HTTP routes (:mod:`server.fleet`, :mod:`server.queue`), inside one
transaction per command, with the same validation models, so the rules are the same on both paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from arte.privacy import MECHANISMS
from arte.scoring import DEFAULT_MODE, MODE_HELP, MODES
from server import fleet, queue
from server.aggregates import aggregate_out, compute_aggregate, latest_aggregate, stored_aggregate_out
from server.cli_common import json_option, load_json_file, run_command, table
from server.errors import NotFound
from server.schemas import JOB_KINDS, CohortIn, JobIn, RoundIn, TaskIn, TokenIn, TokenInfo, TokenOut


def _id_arg(name: str) -> Any:
    return click.argument(name)


# --- tasks --------------------------------------------------------------------------------------------


@click.group()
def tasks() -> None:
    """Tasks: name, instruction, public seed examples."""


@tasks.command("list")
@json_option
@click.pass_obj
def tasks_list(obj: Any, as_json: bool) -> None:
    """List tasks."""

    run_command(
        obj,
        as_json,
        lambda s, now: [fleet.task_out(t) for t in fleet.list_tasks(s)],
        lambda d: table(d, ["task_id", "name", "created_at"]),
    )


@tasks.command("show")
@_id_arg("task_id")
@json_option
@click.pass_obj
def tasks_show(obj: Any, task_id: str, as_json: bool) -> None:
    """Show one task."""

    run_command(obj, as_json, lambda s, now: fleet.task_out(fleet.get_task(s, task_id)))


@tasks.command("create")
@click.option("--name", required=True, help="Unique task name.")
@click.option("--instruction", required=True, help="What the task asks (the teacher's instruction).")
@click.option(
    "--seeds",
    "seeds_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON list or JSONL of public seed examples {input, target|choices+answer}.",
)
@json_option
@click.pass_obj
def tasks_create(obj: Any, name: str, instruction: str, seeds_path: Path | None, as_json: bool) -> None:
    """Create a task."""

    seeds = load_json_file(seeds_path) if seeds_path else []
    run_command(
        obj,
        as_json,
        lambda s, now: fleet.task_out(
            fleet.create_task(s, TaskIn(name=name, instruction=instruction, seeds=seeds), now)
        ),
    )


# --- cohorts ------------------------------------------------------------------------------------------


@click.group()
def cohorts() -> None:
    """Cohorts: student model, task, profile class, privacy policy, k."""


@cohorts.command("list")
@json_option
@click.pass_obj
def cohorts_list(obj: Any, as_json: bool) -> None:
    """List cohorts."""

    run_command(
        obj,
        as_json,
        lambda s, now: [fleet.cohort_out(s, c) for c in fleet.list_cohorts(s)],
        lambda d: table(d, ["cohort_id", "name", "task_id", "min_devices", "n_devices"]),
    )


@cohorts.command("show")
@_id_arg("cohort_id")
@json_option
@click.pass_obj
def cohorts_show(obj: Any, cohort_id: str, as_json: bool) -> None:
    """Show one cohort."""

    run_command(obj, as_json, lambda s, now: fleet.cohort_out(s, fleet.get_cohort(s, cohort_id)))


@cohorts.command("create")
@click.option("--name", required=True, help="Unique cohort name.")
@click.option("--task-id", required=True, help="The task the cohort's devices score.")
@click.option("--student-model", required=True, help="The students' model reference.")
@click.option("--profile-class", required=True, help="Firmware profile class of the devices.")
@click.option(
    "--mechanism",
    type=click.Choice(MECHANISMS),
    default="none",
    show_default=True,
    help="Local DP mechanism required of reports.",
)
@click.option("--epsilon", type=float, default=None, help="DP epsilon per round.")
@click.option("--delta", type=float, default=None, help="DP delta (gaussian).")
@click.option(
    "--min-devices",
    type=int,
    default=3,
    show_default=True,
    help="k: reporting devices needed before scores may drive alignment.",
)
@json_option
@click.pass_obj
def cohorts_create(
    obj: Any,
    name: str,
    task_id: str,
    student_model: str,
    profile_class: str,
    mechanism: str,
    epsilon: float | None,
    delta: float | None,
    min_devices: int,
    as_json: bool,
) -> None:
    """Create a cohort."""

    def fn(s: Any, now: Any) -> Any:
        body = CohortIn(
            name=name,
            task_id=task_id,
            student_model=student_model,
            profile_class=profile_class,
            privacy={"mechanism": mechanism, "epsilon": epsilon, "delta": delta},
            min_devices=min_devices,
        )
        return fleet.cohort_out(s, fleet.create_cohort(s, body, now))

    run_command(obj, as_json, fn)


# --- tokens -------------------------------------------------------------------------------------------


@click.group()
def tokens() -> None:
    """One-time enrollment tokens bound to a cohort."""


@tokens.command("list")
@click.option("--cohort-id", default=None, help="Only tokens of this cohort.")
@json_option
@click.pass_obj
def tokens_list(obj: Any, cohort_id: str | None, as_json: bool) -> None:
    """List tokens (never the secrets)."""

    run_command(
        obj,
        as_json,
        lambda s, now: [
            TokenInfo(
                token_id=t.id,
                cohort_id=t.cohort_id,
                note=t.note,
                created_at=t.created_at,
                expires_at=t.expires_at,
                used_at=t.used_at,
                device_id=t.device_id,
            )
            for t in fleet.list_tokens(s, cohort_id)
        ],
        lambda d: table(d, ["token_id", "cohort_id", "expires_at", "used_at", "device_id"]),
    )


@tokens.command("show")
@_id_arg("token_id")
@json_option
@click.pass_obj
def tokens_show(obj: Any, token_id: str, as_json: bool) -> None:
    """Show one token's state."""

    def fn(s: Any, now: Any) -> Any:
        for t in fleet.list_tokens(s):
            if t.id == token_id:
                return TokenInfo(
                    token_id=t.id,
                    cohort_id=t.cohort_id,
                    note=t.note,
                    created_at=t.created_at,
                    expires_at=t.expires_at,
                    used_at=t.used_at,
                    device_id=t.device_id,
                )
        raise NotFound(f"no token {token_id}", field="token_id")

    run_command(obj, as_json, fn)


@tokens.command("create")
@click.option("--cohort-id", required=True, help="Cohort the enrolled device joins.")
@click.option("--ttl-s", type=int, default=None, help="Lifetime in seconds (default from settings: 7 days).")
@click.option("--note", default="", help="Free text (who the token is for).")
@json_option
@click.pass_obj
def tokens_create(obj: Any, cohort_id: str, ttl_s: int | None, note: str, as_json: bool) -> None:
    """Create a token; it is printed once."""

    def fn(s: Any, now: Any) -> Any:
        row, token = fleet.create_token(
            s, TokenIn(cohort_id=cohort_id, ttl_s=ttl_s, note=note), now, obj.settings().enroll_token_ttl_s
        )
        return TokenOut(token_id=row.id, token=token, cohort_id=row.cohort_id, expires_at=row.expires_at)

    run_command(obj, as_json, fn, lambda d: f"token (shown once): {d['token']}\nexpires {d['expires_at']}")


# --- rounds -------------------------------------------------------------------------------------------


@click.group()
def rounds() -> None:
    """Rounds: a set of drafts a cohort scores."""


@rounds.command("list")
@click.option("--cohort-id", default=None, help="Only rounds of this cohort.")
@click.option(
    "--state", type=click.Choice(["open", "closed"]), default=None, help="Only rounds in this state."
)
@json_option
@click.pass_obj
def rounds_list(obj: Any, cohort_id: str | None, state: str | None, as_json: bool) -> None:
    """List rounds."""

    run_command(
        obj,
        as_json,
        lambda s, now: [fleet.round_out(s, r) for r in fleet.list_rounds(s, cohort_id, state)],
        lambda d: table(d, ["round_id", "cohort_id", "state", "n_drafts", "n_reports", "created_at"]),
    )


@rounds.command("show")
@_id_arg("round_id")
@json_option
@click.pass_obj
def rounds_show(obj: Any, round_id: str, as_json: bool) -> None:
    """Show one round."""

    run_command(obj, as_json, lambda s, now: fleet.round_out(s, fleet.get_round(s, round_id)))


@rounds.command("create")
@click.option("--cohort-id", required=True, help="Cohort that scores the drafts.")
@click.option(
    "--drafts",
    "drafts_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Drafts JSONL ({id, question, rationale, answer, ...} per line).",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default=DEFAULT_MODE,
    show_default=True,
    help=f"Scoring mode devices must use. {MODE_HELP}",
)
@click.option(
    "--max-new-tokens", type=int, default=256, show_default=True,
    help="Generation budget per item in the reasoning modes (devices cap it by their profile).",
)
@click.option(
    "--min-items", type=int, default=10, show_default=True, help="Fewest items a device must score."
)
@json_option
@click.pass_obj
def rounds_create(
    obj: Any, cohort_id: str, drafts_path: Path, mode: str, max_new_tokens: int, min_items: int, as_json: bool
) -> None:
    """Open a round of drafts."""

    drafts = load_json_file(drafts_path)
    run_command(
        obj,
        as_json,
        lambda s, now: fleet.round_out(
            s,
            fleet.create_round(
                s,
                RoundIn(
                    cohort_id=cohort_id,
                    drafts=drafts,
                    mode=mode,
                    max_new_tokens=max_new_tokens,
                    min_items=min_items,
                ),
                now,
            ),
        ),
    )


@rounds.command("close")
@_id_arg("round_id")
@json_option
@click.pass_obj
def rounds_close(obj: Any, round_id: str, as_json: bool) -> None:
    """Close a round (later reports are refused)."""

    run_command(obj, as_json, lambda s, now: fleet.round_out(s, fleet.close_round(s, round_id, now)))


# --- aggregates ---------------------------------------------------------------------------------------


@click.group()
def aggregates() -> None:
    """Aggregates: a round's per-draft cohort estimates (unbiased under local DP) and the k-threshold."""


def _aggregate_table(d: dict[str, Any]) -> str:
    def num(x: Any, fmt: str = ".3f") -> str:
        return "-" if x is None else format(x, fmt)

    head = (
        f"round {d['round_id']}: {d['n_devices']} devices, k={d['min_devices']}, "
        f"may_align={str(d['may_align']).lower()} ({d['reason']})"
    )
    rows = [
        {
            "draft": k,
            "devices": v["n_devices"],
            "items": num(v["n_items"], "g"),
            "score": num(v["score"]),
            "accuracy": num(v.get("accuracy")),
            "95% interval": f"[{num(v.get('ci_low'))}, {num(v.get('ci_high'))}]",
            "noise_var": num(v.get("noise_variance"), ".2e"),
            "eligible": "yes" if v.get("eligible") else "no",
        }
        for k, v in d["drafts"].items()
    ]
    excluded = [f"excluded {dev}: {why}" for dev, why in (d.get("excluded") or {}).items()]
    cols = ["draft", "devices", "items", "score", "accuracy", "95% interval", "noise_var", "eligible"]
    return "\n".join([head, table(rows, cols), *excluded])


@aggregates.command("show")
@_id_arg("round_id")
@click.option(
    "--stored", is_flag=True, help="The newest aggregate stored by an aggregate job, not a live one."
)
@json_option
@click.pass_obj
def aggregates_show(obj: Any, round_id: str, stored: bool, as_json: bool) -> None:
    """Per-draft estimates of a round: accuracy, variance, 95% interval, eligibility (>= k devices)."""

    def fn(s: Any, now: Any) -> Any:
        rnd = fleet.get_round(s, round_id)
        if not stored:
            return aggregate_out(rnd, compute_aggregate(s, rnd), now)
        row = latest_aggregate(s, round_id)
        if row is None:
            raise NotFound(f"no stored aggregate for round {round_id}", field="round_id")
        return stored_aggregate_out(rnd, row)

    run_command(obj, as_json, fn, _aggregate_table)


# --- jobs ---------------------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """Jobs: aggregate, elicit, align, tailor."""


@jobs.command("list")
@click.option("--state", default=None, help="Only jobs in this state.")
@click.option("--kind", default=None, help="Only jobs of this kind.")
@json_option
@click.pass_obj
def jobs_list(obj: Any, state: str | None, kind: str | None, as_json: bool) -> None:
    """List jobs."""

    run_command(
        obj,
        as_json,
        lambda s, now: [queue.job_out(j) for j in queue.list_jobs(s, state=state, kind=kind)],
        lambda d: table(d, ["job_id", "kind", "state", "attempts", "cohort_id", "created_at"]),
    )


@jobs.command("show")
@_id_arg("job_id")
@click.option("--logs", is_flag=True, help="Include the job's log lines.")
@json_option
@click.pass_obj
def jobs_show(obj: Any, job_id: str, logs: bool, as_json: bool) -> None:
    """Show one job (and its logs)."""

    def fn(s: Any, now: Any) -> Any:
        out = queue.job_out(queue.get_job(s, job_id)).model_dump(mode="json")
        if logs:
            out["logs"] = [x.model_dump(mode="json") for x in queue.job_logs(s, job_id)]
        return out

    run_command(obj, as_json, fn)


@jobs.command("create")
@click.option(
    "--kind",
    type=click.Choice(JOB_KINDS),
    required=True,
    help="What the job does.",
)
@click.option("--cohort-id", required=True, help="The cohort it works for.")
@click.option("--round-id", default=None, help="The round (aggregate and align need one).")
@click.option("--params", default="{}", help='Job parameters as a JSON object (e.g. {"config": {...}}).')
@click.option(
    "--max-attempts", type=int, default=None, help="Attempts before failing (default from settings)."
)
@json_option
@click.pass_obj
def jobs_create(
    obj: Any,
    kind: str,
    cohort_id: str,
    round_id: str | None,
    params: str,
    max_attempts: int | None,
    as_json: bool,
) -> None:
    """Queue a job."""

    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e.msg}", param_hint="--params") from None
    run_command(
        obj,
        as_json,
        lambda s, now: queue.job_out(
            queue.submit(
                s,
                JobIn(
                    kind=kind,
                    cohort_id=cohort_id,
                    round_id=round_id,
                    params=parsed,
                    max_attempts=max_attempts,
                ),
                now,
                obj.settings().job_max_attempts,
            )
        ),
    )


@jobs.command("cancel")
@_id_arg("job_id")
@json_option
@click.pass_obj
def jobs_cancel(obj: Any, job_id: str, as_json: bool) -> None:
    """Cancel a job."""

    run_command(obj, as_json, lambda s, now: queue.job_out(queue.cancel(s, job_id, now)))


# --- devices ------------------------------------------------------------------------------------------


@click.group()
def devices() -> None:
    """Enrolled devices."""


@devices.command("list")
@click.option("--cohort-id", default=None, help="Only devices of this cohort.")
@json_option
@click.pass_obj
def devices_list(obj: Any, cohort_id: str | None, as_json: bool) -> None:
    """List devices."""

    run_command(
        obj,
        as_json,
        lambda s, now: [fleet.device_out(d) for d in fleet.list_devices(s, cohort_id)],
        lambda d: table(d, ["device_id", "device_name", "cohort_id", "last_seen_at", "revoked_at"]),
    )


@devices.command("revoke")
@_id_arg("device_id")
@json_option
@click.pass_obj
def devices_revoke(obj: Any, device_id: str, as_json: bool) -> None:
    """Revoke a device's key."""

    run_command(obj, as_json, lambda s, now: fleet.device_out(fleet.revoke_device(s, device_id, now)))
