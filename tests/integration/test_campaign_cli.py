"""`arte-server campaigns|adapters|service` on CliRunner against a real database: the policy built from the
options, one JSON document with --json, refusals as exit 1 naming the field, the systemd units."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.cli import Exit, main
from server.service import SERVE_UNIT, WORKER_UNIT
from tests.support.server_support import Backend


def run(backend: Backend, tmp_path: Path, *args: str, code: int = 0) -> dict | list:
    env = {"ARTE_SERVER_DB_SCHEMA": backend.schema or ""} if backend.schema else {}
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "d"), "--database-url", backend.url, *args],
                                env=env, catch_exceptions=False)
    assert result.exit_code == code, (args, result.output)
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_campaign_commands(backend: Backend, tmp_path: Path) -> None:
    run(backend, tmp_path, "init", "--json")
    task = run(backend, tmp_path, "tasks", "create", "--name", "t", "--instruction", "Answer.", "--json")
    cohort = run(backend, tmp_path, "cohorts", "create", "--name", "c", "--task-id", task["task_id"],
                 "--student-model", "default", "--profile-class", "laptop-cpu", "--min-devices", "4", "--json")
    cid = cohort["cohort_id"]
    c = run(backend, tmp_path, "campaigns", "create", "--cohort-id", cid, "--rounds", "3", "--questions", "5",
            "--styles", "plain, expert", "--deadline-s", "3600", "--align-config", '{"epochs": 2}', "--json")
    p = c["policy"]
    assert (c["state"], c["rounds"], c["round_no"], c["step"], c["version"]) == ("active", 3, 1, "elicit", 1)
    assert p["drafts"] == {"n_questions": 5, "styles": ["plain", "expert"]} and p["align"] == {"epochs": 2}
    assert (p["close_devices"], p["deadline_s"], p["max_failures"]) == (4, 3600.0, 3)   # k by default
    # one live campaign per cohort; bad values name the field
    err = run(backend, tmp_path, "campaigns", "create", "--cohort-id", cid, "--forever", "--json",
              code=Exit.REFUSED)
    assert err["error"]["type"] == "conflict" and err["error"]["detail"]["field"] == "cohort_id"
    err = run(backend, tmp_path, "campaigns", "create", "--cohort-id", cid, "--rounds", "1", "--tailor-config",
              '{"n_questions": 0}', "--json", code=Exit.REFUSED)
    assert "tailor.n_questions" in err["error"]["message"]
    run(backend, tmp_path, "campaigns", "create", "--cohort-id", cid, "--rounds", "1", "--forever", code=Exit.USAGE)
    run(backend, tmp_path, "campaigns", "create", "--cohort-id", cid, "--rounds", "1", "--align-config", "[1]",
        code=Exit.USAGE)

    ident = c["campaign_id"]
    assert run(backend, tmp_path, "campaigns", "pause", ident, "--json")["state"] == "paused"
    shown = run(backend, tmp_path, "campaigns", "show", ident)
    assert "paused" in shown and "paused by the operator" in shown and "v2 paused" in shown
    assert run(backend, tmp_path, "campaigns", "resume", ident, "--json")["state"] == "active"
    assert [x["campaign_id"] for x in run(backend, tmp_path, "campaigns", "list", "--state", "active", "--json")] \
        == [ident]
    stopped = run(backend, tmp_path, "campaigns", "stop", ident, "--json")
    assert stopped["state"] == "stopped" and [e["event"] for e in stopped["events"]][-1] == "stopped"
    err = run(backend, tmp_path, "campaigns", "resume", ident, "--json", code=Exit.REFUSED)
    assert err["error"]["type"] == "conflict"

    assert run(backend, tmp_path, "adapters", "list", "--cohort-id", cid, "--json") == []
    back = run(backend, tmp_path, "adapters", "rollback", "--cohort-id", cid, "--base", "--json")
    assert back["adapter_id"] is None
    err = run(backend, tmp_path, "adapters", "rollback", "--cohort-id", cid, "--adapter-id", "adp_" + "1" * 32,
              "--json", code=Exit.REFUSED)
    assert err["error"]["detail"]["field"] == "adapter_id"


def test_service_install_writes_hardened_units_for_serve_and_workers(sqlite_backend: Backend,
                                                                    tmp_path: Path) -> None:
    units = tmp_path / "units"
    out = run(sqlite_backend, tmp_path, "service", "install", "--unit-dir", str(units), "--user", "arte",
              "--exec", "/opt/arte/bin/arte-server", "--env-file", "/etc/arte/server.env", "--workers", "3",
              "--port", "8800", "--worker-memory-max-mib", "6000", "--json")
    assert sorted(out["units"]) == sorted([SERVE_UNIT, WORKER_UNIT])
    parsed = {}
    for name in (SERVE_UNIT, WORKER_UNIT):
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.read_string((units / name).read_text())
        parsed[name] = cp["Service"]
    serve, worker = parsed[SERVE_UNIT], parsed[WORKER_UNIT]
    assert serve["ExecStart"] == ("/opt/arte/bin/arte-server serve --host 127.0.0.1 --port 8800 --workers 1 "
                                  "--no-access-log")
    assert worker["ExecStart"] == "/opt/arte/bin/arte-server worker" and worker["MemoryMax"] == "6000M"
    for svc in (serve, worker):
        assert (svc["User"], svc["EnvironmentFile"], svc["NoNewPrivileges"], svc["ProtectSystem"],
                svc["PrivateTmp"], svc["RestartPreventExitStatus"]) == (
            "arte", "/etc/arte/server.env", "yes", "strict", "yes", "3")
        assert svc["ReadWritePaths"].split()[0] == str((tmp_path / "d").resolve())
    assert any("arte-server-worker@3.service" in c for c in out["commands"])
    assert any("PostgreSQL" in w for w in out["warnings"])   # 3 workers on SQLite


@pytest.mark.parametrize("args,field", [
    (["--exec", "bin/arte-server"], "exec"),
    (["--user", "Robert'); DROP"], "user"),
    (["--host", "a b"], "host"),
])
def test_service_install_refuses_bad_values(sqlite_backend: Backend, tmp_path: Path, args: list[str],
                                            field: str) -> None:
    err = run(sqlite_backend, tmp_path, "service", "install", "--unit-dir", str(tmp_path / "u"), *args, "--json",
              code=Exit.REFUSED)
    assert err["error"]["detail"]["field"] == field
    assert not (tmp_path / "u" / SERVE_UNIT).exists()
