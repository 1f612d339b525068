"""`arte-server` admin commands on CliRunner against a real database: one JSON document per command with
--json, the same rules as the HTTP API, documented exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from server.cli import EXIT_NOT_READY, EXIT_REFUSED, main
from tests.server_support import Backend


def run(backend: Backend, tmp_path: Path, *args: str, code: int = 0) -> dict | list:
    env = {"ARTE_SERVER_DB_SCHEMA": backend.schema or ""} if backend.schema else {}
    result = CliRunner().invoke(
        main,
        ["--data-dir", str(tmp_path / "d"), "--database-url", backend.url, *args],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == code, (args, result.output, result.stderr if hasattr(result, "stderr") else "")
    return json.loads(result.stdout)


def test_admin_commands_end_to_end(backend: Backend, tmp_path: Path) -> None:
    assert (
        run(backend, tmp_path, "tasks", "list", "--json", code=EXIT_NOT_READY)["error"]["type"] == "not_ready"
    )
    init = run(backend, tmp_path, "init", "--json")
    assert init["admin_key"].startswith("arte_ak_")
    assert run(backend, tmp_path, "init", "--json")["admin_key"] is None
    rotated = run(backend, tmp_path, "init", "--rotate-admin-key", "--json")["admin_key"]
    assert rotated and rotated != init["admin_key"]

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"input": "Is 1+1=2?", "choices": ["yes", "no"], "answer": "yes"}\n')
    task = run(
        backend,
        tmp_path,
        "tasks",
        "create",
        "--name",
        "arith",
        "--instruction",
        "Answer.",
        "--seeds",
        str(seeds),
        "--json",
    )
    assert task["seeds"] == [{"input": "Is 1+1=2?", "choices": ["yes", "no"], "answer": "yes"}]
    dup = run(
        backend,
        tmp_path,
        "tasks",
        "create",
        "--name",
        "arith",
        "--instruction",
        "x",
        "--json",
        code=EXIT_REFUSED,
    )
    assert dup["error"]["detail"]["field"] == "name"
    cohort = run(
        backend,
        tmp_path,
        "cohorts",
        "create",
        "--name",
        "pi",
        "--task-id",
        task["task_id"],
        "--student-model",
        "default",
        "--profile-class",
        "rpi5",
        "--min-devices",
        "2",
        "--json",
    )
    bad = run(
        backend,
        tmp_path,
        "cohorts",
        "create",
        "--name",
        "x",
        "--task-id",
        task["task_id"],
        "--student-model",
        "m",
        "--profile-class",
        "p",
        "--mechanism",
        "laplace",
        "--json",
        code=EXIT_REFUSED,
    )
    assert bad["error"]["type"] == "validation_error" and bad["error"]["detail"]["field"] == "privacy"
    token = run(backend, tmp_path, "tokens", "create", "--cohort-id", cohort["cohort_id"], "--json")
    assert token["token"].startswith("arte_et_")
    listed = run(backend, tmp_path, "tokens", "list", "--json")
    assert [t["token_id"] for t in listed] == [token["token_id"]] and "token" not in listed[0]

    drafts = tmp_path / "drafts.jsonl"
    drafts.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "question": "q", "rationale": "r", "answer": "a"}) + "\n"
            for i in range(3)
        )
    )
    rnd = run(
        backend,
        tmp_path,
        "rounds",
        "create",
        "--cohort-id",
        cohort["cohort_id"],
        "--drafts",
        str(drafts),
        "--json",
    )
    assert rnd["n_drafts"] == 3 and rnd["state"] == "open"
    assert [r["round_id"] for r in run(backend, tmp_path, "rounds", "list", "--json")] == [rnd["round_id"]]
    below = run(
        backend,
        tmp_path,
        "jobs",
        "create",
        "--kind",
        "align",
        "--cohort-id",
        cohort["cohort_id"],
        "--round-id",
        rnd["round_id"],
        "--json",
        code=EXIT_REFUSED,
    )
    assert below["error"]["type"] == "below_k"
    job = run(
        backend,
        tmp_path,
        "jobs",
        "create",
        "--kind",
        "aggregate",
        "--cohort-id",
        cohort["cohort_id"],
        "--round-id",
        rnd["round_id"],
        "--json",
    )
    ran = run(backend, tmp_path, "worker", "--once", "--json")
    assert ran == {"job_id": job["job_id"]}
    shown = run(backend, tmp_path, "jobs", "show", job["job_id"], "--logs", "--json")
    assert shown["state"] == "succeeded" and shown["result"]["n_devices"] == 0 and shown["logs"]
    assert run(backend, tmp_path, "worker", "--once", "--json") == {"job_id": None}
    closed = run(backend, tmp_path, "rounds", "close", rnd["round_id"], "--json")
    assert closed["state"] == "closed"
    assert (
        run(backend, tmp_path, "jobs", "list", "--state", "succeeded", "--json")[0]["job_id"] == job["job_id"]
    )
    assert run(backend, tmp_path, "devices", "list", "--json") == []
