"""`edge-agent` commands through click's CliRunner, against the fake fleet (transport injected)."""

from __future__ import annotations

import configparser
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import edge_agent.cli as cli
from arte.retry import RetryPolicy
from edge_agent.client import ServerClient
from edge_agent.errors import ExitCode
from tests.support.fake_fleet import FakeFleet
from tests.support.fakes import ARM_CPUINFO, fake_root
from tests.support.llama_check_fakes import child_code, fake_llama_check


@pytest.fixture(autouse=True)
def passing_llama_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor's llama.cpp self-check with a child that passes (tests/unit/test_agent_doctor.py covers it)."""
    monkeypatch.setattr(cli, "_llama_check", fake_llama_check(child_code()))


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> FakeFleet:
    f = FakeFleet()
    real = cli._client

    def client(settings, state, key, url=None):
        c = real(settings, state, key, url)
        return ServerClient(c.base_url, key, transport=f.transport, wait=lambda s: None,
                            retry=RetryPolicy(attempts=2), on_contact=c.on_contact)

    monkeypatch.setattr(cli, "_client", client)
    return f


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    root = fake_root(tmp_path / "root", cpuinfo=ARM_CPUINFO, model="Raspberry Pi 5 Model B Rev 1.1")
    return {"EDGE_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_ROOT": str(root)}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "private.jsonl"
    p.write_text("".join(json.dumps({"input": f"Is {i} even?", "choices": ["yes", "no"],
                                     "answer": "yes" if i % 2 == 0 else "no"}) + "\n" for i in range(20)))
    return p


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(cli.main, args, env=env, catch_exceptions=False)


def test_help_lists_commands_and_exit_codes() -> None:
    out = CliRunner().invoke(cli.main, ["--help"]).output
    for word in ("enroll", "doctor", "run", "status", "service", "config", "score"):
        assert word in out
    for code in ExitCode:
        assert f"{code.value:>2}  {code.name.lower()}:" in out


def test_help_is_light_and_the_agent_never_imports_the_server() -> None:
    code = ("import sys, edge_agent.cli, edge_agent.loop, edge_agent.doctor; "
            "from click.testing import CliRunner; CliRunner().invoke(edge_agent.cli.main, ['--help']); "
            "heavy = [m for m in ('torch', 'llama_cpp', 'transformers', 'server') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_enroll_status_and_exact_payloads(fleet: FakeFleet, env, data: Path, tmp_path: Path) -> None:
    r = invoke(["enroll", "--server", "http://fleet.test", "--token", "tok-1", "--data", str(data), "--json"], env)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["profile"] == "raspberry-pi-5" and out["device_id"] == "dev-1"
    key = tmp_path / "state" / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    body = json.loads(fleet.requests("POST", "/enroll$")[0].content)
    assert body["hardware"]["device_tree_model"] == "Raspberry Pi 5 Model B Rev 1.1"
    assert str(data) not in json.dumps(body)
    # again without --force: refused, nothing changed
    r = invoke(["enroll", "--server", "http://fleet.test", "--token", "tok-1"], env)
    assert r.exit_code == ExitCode.ERROR and "already enrolled" in r.output

    fleet.open_round([{"id": "d1", "question": "q?", "rationale": "<ans>yes</ans>", "answer": "yes"}])
    r = invoke(["status", "--json"], env)
    st = json.loads(r.output)
    assert st["enrolled"] and st["data_path"] == str(data) and st["last_contact_at"]
    (sent,) = st["last_sent"]
    assert sent["kind"] == "enroll" and sent["body"]["token"] == "<redacted>"
    assert "device_key" not in sent["response"] or "<redacted>" in sent["response"]


def test_enroll_with_a_bad_token_exits_auth(fleet: FakeFleet, env) -> None:
    r = invoke(["enroll", "--server", "http://fleet.test", "--token", "nope"], env)
    assert r.exit_code == ExitCode.AUTH and "invalid_token" in r.output


def test_enroll_with_an_unreachable_server_exits_network(fleet: FakeFleet, env) -> None:
    fleet.down = 10
    r = invoke(["enroll", "--server", "http://fleet.test", "--token", "tok-1"], env)
    assert r.exit_code == ExitCode.NETWORK


def test_run_before_enrolling(env) -> None:
    r = invoke(["run", "--once"], env)
    assert r.exit_code == ExitCode.NOT_ENROLLED and "enroll" in r.output


def test_run_once_json_reports_and_status_shows_it(fleet: FakeFleet, env, data: Path, monkeypatch) -> None:
    from tests.support.fakes import CopyingStudent

    monkeypatch.setattr(cli, "_student_opener", lambda model: lambda profile, adapter: CopyingStudent())
    invoke(["enroll", "--server", "http://fleet.test", "--token", "tok-1", "--data", str(data)], env)
    fleet.open_round([{"id": "d1", "question": "Is 4 even?", "rationale": "<ans>yes</ans>", "answer": "yes"}])
    r = invoke(["run", "--once", "--ignore-conditions", "--json"], env)
    assert r.exit_code == 0, r.output
    it = json.loads(r.stdout)
    assert it["round"]["step"] == "queued" and it["delivery"]["pending"] == 0
    st = json.loads(invoke(["status", "--json"], env).stdout)
    last = st["last_sent"][0]
    assert last["kind"] == "report" and last["body"] == fleet.report_bodies[0]
    assert st["outbox"] == {"delivered": 1}
    assert invoke(["run", "--json"], env).exit_code == ExitCode.USAGE


def test_config_set_checks_values(env, data: Path) -> None:
    assert invoke(["config", "set", "data_path", str(data)], env).exit_code == 0
    r = invoke(["config", "set", "validation_share", "2"], env)
    assert r.exit_code == ExitCode.INPUT and "validation_share" in r.output
    r = invoke(["config", "set", "profile", "toaster"], env)
    assert r.exit_code == ExitCode.INPUT and "raspberry-pi-5" in r.output
    bad = data.parent / "bad.jsonl"
    bad.write_text('{"input": 3}\n')
    r = invoke(["config", "set", "data_path", str(bad)], env)
    assert r.exit_code == ExitCode.INPUT and "bad.jsonl" in r.output
    assert json.loads(invoke(["config", "show", "--json"], env).stdout) == {"data_path": str(data)}
    r = invoke(["config", "set", "threads", "3", "--json"], env)
    assert r.exit_code == 0 and json.loads(r.stdout) == {"key": "threads", "value": "3"}
    r = invoke(["config", "set", "threads", "0", "--json"], env)
    assert r.exit_code == ExitCode.INPUT and "threads" in r.output


def test_doctor_explains_the_pick_and_what_to_fix(env, data: Path) -> None:
    r = invoke(["doctor", "--offline", "--json"], env)
    doc = json.loads(r.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert "picked raspberry-pi-5" in checks["profile"]["detail"]
    assert checks["enrollment"]["status"] == "warn" and "enroll" in checks["enrollment"]["fix"]
    assert checks["data"]["status"] == "warn"
    assert r.exit_code == (0 if doc["ok"] else ExitCode.CHECKS)
    human = invoke(["doctor", "--offline"], env).output
    assert "fix: edge-agent enroll" in human


def test_doctor_flags_a_readable_device_key(fleet: FakeFleet, env, tmp_path: Path) -> None:
    invoke(["enroll", "--server", "http://fleet.test", "--token", "tok-1"], env)
    (tmp_path / "state" / "device.key").chmod(0o644)
    r = invoke(["doctor", "--json"], env)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["device_key"]["status"] == "fail" and "chmod 600" in checks["device_key"]["fix"]
    assert checks["server"]["status"] == "ok"
    assert r.exit_code == ExitCode.CHECKS


def test_service_install_writes_a_unit_without_root(env, tmp_path: Path) -> None:
    unit = tmp_path / "units" / "edge-agent.service"
    r = invoke(["service", "install", "--output", str(unit), "--user", "arte", "--env-file",
                "/etc/arte/agent.env", "--exec", "/opt/arte/bin/edge-agent", "--json"], env)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string(unit.read_text())
    svc = cp["Service"]
    assert svc["Restart"] == "on-failure" and svc["User"] == "arte"
    assert svc["RestartPreventExitStatus"] == f"{ExitCode.AUTH.value} {ExitCode.NOT_ENROLLED.value}"
    assert svc["EnvironmentFile"] == "/etc/arte/agent.env" and svc["ExecStart"] == "/opt/arte/bin/edge-agent run"
    assert f"EDGE_AGENT_STATE_DIR={tmp_path / 'state'}" in svc["Environment"]
    assert any("systemctl enable --now edge-agent.service" in c for c in out["commands"])
    assert out["warnings"]  # the env file does not exist here


def test_service_unit_is_hardened_and_bounded_by_the_profiles_memory_budget(env, tmp_path: Path, fleet,
                                                                              data: Path) -> None:
    from arte.home import model_dir
    from firmware_profiles import load_profiles

    unit = tmp_path / "edge-agent.service"
    r = invoke(["service", "install", "--output", str(unit), "--json"], env)
    assert r.exit_code == 0 and "no MemoryMax" in json.loads(r.stdout)["warnings"][0]   # not enrolled yet
    assert "MemoryMax" not in unit.read_text()
    assert invoke(["enroll", "--server", "http://fleet.test", "--token", "tok-1", "--data", str(data)], env).exit_code == 0
    r = invoke(["service", "install", "--output", str(unit), "--json"], env)
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string(unit.read_text())
    svc = cp["Service"]
    budget = load_profiles()["raspberry-pi-5"].budget.memory_mib
    assert svc["MemoryMax"] == f"{budget + budget // 4}M" and json.loads(r.stdout)["warnings"] == []
    assert (svc["NoNewPrivileges"], svc["ProtectSystem"], svc["ProtectHome"], svc["PrivateTmp"]) == (
        "yes", "strict", "read-only", "yes")
    assert svc["IOSchedulingClass"] == "idle"
    assert svc["ReadWritePaths"] == f"{tmp_path / 'state'} -{model_dir().resolve()}"
    r = invoke(["service", "install", "--output", str(unit), "--memory-max-mib", "900"], env)
    assert r.exit_code == 0 and "MemoryMax=900M" in unit.read_text()


@pytest.mark.parametrize("args,field", [
    (["--exec", "bin/edge-agent"], "exec"),
    (["--user", "Robert'); DROP"], "user"),
    (["--env-file", "relative.env"], "env_file"),
])
def test_service_install_refuses_bad_values(env, tmp_path: Path, args: list[str], field: str) -> None:
    r = invoke(["service", "install", "--output", str(tmp_path / "u.service"), *args], env)
    assert r.exit_code == ExitCode.INPUT and field in r.output
    assert not (tmp_path / "u.service").exists()
