"""`arte-server` admin commands on CliRunner against a real database: one JSON document per command with
--json, the same rules as the HTTP API, documented exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from server.cli import Exit, main
from tests.support.server_support import Backend


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
        run(backend, tmp_path, "tasks", "list", "--json", code=Exit.NOT_READY)["error"]["type"] == "not_ready"
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
        code=Exit.REFUSED,
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
        code=Exit.REFUSED,
    )
    assert bad["error"]["type"] == "validation_error" and bad["error"]["detail"]["field"] == "privacy.epsilon"
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
        code=Exit.REFUSED,
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


def test_cohort_privacy_policy_and_aggregate_estimates_from_the_shell(
    backend: Backend, tmp_path: Path
) -> None:
    from server import db, fleet, reports
    from server.schemas import ReportIn, TokenIn
    from server.settings import ServerSettings
    from server.tables import utcnow

    run(backend, tmp_path, "init", "--json")
    task = run(backend, tmp_path, "tasks", "create", "--name", "t", "--instruction", "Answer.", "--json")
    cohort = run(
        backend,
        tmp_path,
        "cohorts",
        "create",
        "--name",
        "pi5",
        "--task-id",
        task["task_id"],
        "--student-model",
        "default",
        "--profile-class",
        "rpi5",
        "--mechanism",
        "gaussian",
        "--epsilon",
        "2",
        "--delta",
        "1e-6",
        "--min-devices",
        "2",
        "--json",
    )
    assert cohort["privacy"] == {"mechanism": "gaussian", "epsilon": 2.0, "delta": 1e-6}
    drafts = tmp_path / "drafts.jsonl"
    drafts.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "question": "q", "rationale": "r", "answer": "a"}) + "\n"
            for i in range(2)
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
    assert rnd["privacy"] == cohort["privacy"]
    # two devices report noised counts (through the same functions the HTTP routes call)
    settings = ServerSettings(data_dir=tmp_path / "d", database_url=backend.url, db_schema=backend.schema)
    engine = db.make_engine(settings.resolved_database_url(), schema=settings.db_schema)
    try:
        with db.transaction(db.make_sessionmaker(engine)) as s:
            for i, counts in enumerate([(7.4, 2.1), (8.9, 0.6)]):
                _, token = fleet.create_token(s, TokenIn(cohort_id=cohort["cohort_id"]), utcnow(), 3600)
                dev, _ = fleet.enroll(
                    s,
                    token,
                    device_name=f"p{i}",
                    profile_id="rpi5",
                    hardware={},
                    agent_version="",
                    now=utcnow(),
                )
                body = ReportIn(
                    idempotency_key=f"k{i}",
                    mode="cot-choice",
                    privacy=cohort["privacy"],
                    scores=[
                        {"draft_id": f"d{j}", "n_items": 10.0, "n_correct": c} for j, c in enumerate(counts)
                    ],
                )
                reports.submit_report(s, dev, rnd["round_id"], body, utcnow())
    finally:
        engine.dispose()
    shown = run(backend, tmp_path, "aggregates", "show", rnd["round_id"], "--json")
    assert shown["may_align"] is True and shown["drafts"]["d0"]["n_correct"] == 16.3
    assert (
        shown["drafts"]["d0"]["ci_low"] < shown["drafts"]["d0"]["accuracy"] < shown["drafts"]["d0"]["ci_high"]
    )
    human = CliRunner().invoke(
        main,
        [
            "--data-dir",
            str(tmp_path / "d"),
            "--database-url",
            backend.url,
            "aggregates",
            "show",
            rnd["round_id"],
        ],
        env={"ARTE_SERVER_DB_SCHEMA": backend.schema} if backend.schema else {},
    )
    assert "may_align=true" in human.output and "95% interval" in human.output and "d1" in human.output
    missing = run(
        backend, tmp_path, "aggregates", "show", rnd["round_id"], "--stored", "--json", code=Exit.REFUSED
    )
    assert missing["error"]["type"] == "not_found"
    run(
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
    run(backend, tmp_path, "worker", "--once", "--json")
    stored = run(backend, tmp_path, "aggregates", "show", rnd["round_id"], "--stored", "--json")
    assert stored["drafts"] == shown["drafts"] and stored["may_align"] is True
