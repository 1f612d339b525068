"""The device's privacy accountant end to end: `edge-agent` (its CLI, loop, SQLite ledger and client)
against `arte-server serve` on loopback, through the recording proxy. With a small lifetime budget the
agent reports noised rounds until the next one would overspend; that round is refused on the device
(exit code 11), nothing of it is sent, `edge-agent status` shows what was spent, and a stricter round
that still fits is reported. The student is the copying fake (its scores do not matter here); everything
else is the real code path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

import edge_agent.cli as cli  # noqa: E402
from edge_agent.errors import ExitCode  # noqa: E402
from tests.support.fakes import CopyingStudent  # noqa: E402
from tests.support.live_server import DRAFTS, LiveServer  # noqa: E402
from tests.support.privacy_audit import RecordingProxy  # noqa: E402

LAPLACE = {"mechanism": "laplace", "epsilon": 1.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("fleet"))
    yield s
    s.stop()


def agent(env: dict[str, str], *args: str, code: int = 0) -> Any:
    r = CliRunner().invoke(cli.main, list(args), env=env)
    assert r.exit_code == code, (args, r.exit_code, r.output)
    return json.loads(r.stdout) if "--json" in args else r.stdout


def test_the_accountant_stops_reports_at_the_end_of_the_budget(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_student_opener", lambda model: lambda profile, adapter: CopyingStudent())
    task = server.admin("POST", "/tasks", {"name": "budget", "instruction": "Is the number even?"})["task_id"]
    cohort = server.admin(
        "POST",
        "/cohorts",
        {
            "name": "budget",
            "task_id": task,
            "student_model": "default",
            "profile_class": "laptop-cpu",
            "min_devices": 1,
            "privacy": LAPLACE,
        },
    )["cohort_id"]
    token = server.admin("POST", "/tokens", {"cohort_id": cohort})["token"]
    data = tmp_path / "private.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "input": f"Is {i} even? private-{i}",
                    "choices": ["yes", "no"],
                    "answer": "yes" if i % 2 == 0 else "no",
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    env = {"EDGE_AGENT_STATE_DIR": str(tmp_path / "agent")}
    with RecordingProxy(server.url) as proxy:
        agent(
            env,
            "enroll",
            "--server",
            proxy.url,
            "--token",
            token,
            "--profile",
            "laptop-cpu",
            "--data",
            str(data),
            "--json",
        )
        agent(env, "config", "set", "privacy_total_epsilon", "2.5")
        assert agent(env, "status", "--json")["privacy"]["budget"] == {"epsilon": 2.5, "delta": 0.0}

        for n in (1, 2):  # epsilon 1 per round: two rounds fit a budget of 2.5
            rnd = server.open_round(cohort)
            it = agent(env, "run", "--once", "--ignore-conditions", "--json")
            assert it["round"]["step"] == "queued" and it["delivery"]["pending"] == 0, it
            (report,) = server.reports(rnd)
            assert report["privacy"] == {"mechanism": "laplace", "epsilon": 1.0, "delta": 0.0}
            st = agent(env, "status", "--json")["privacy"]
            assert st["spent"] == {"epsilon": float(n), "delta": 0.0, "method": "basic"}, st
        assert st["remaining_epsilon"] == 0.5 and st["n_reports"] == 2

        refused = server.open_round(cohort)
        before = len(proxy.requests)
        it = agent(env, "run", "--once", "--ignore-conditions", "--json", code=ExitCode.BUDGET)
        assert it["round"]["step"] == "skipped" and it["round"]["budget"] is True, it
        assert "budget" in it["round"]["reason"] and it["round"]["round_id"] == refused
        sent = proxy.requests[before:]
        assert sent and all(r.method == "GET" for r in sent), [(r.method, r.url) for r in sent]
        assert server.reports(refused) == []
        st = agent(env, "status", "--json")
        assert st["privacy"]["spent"]["epsilon"] == 2.0 and st["privacy"]["n_reports"] == 2
        assert refused not in [c["round_id"] for c in st["privacy"]["charges"]]
        assert st["journal"][f"round:{refused}"]["step"] == "skipped"
        human = agent(env, "status")
        assert "epsilon spent 2 of 2.5 (basic composition, 2 noised report(s)" in human

        # the refusal is kept: running again sends nothing for that round
        before = len(proxy.requests)
        agent(env, "run", "--once", "--ignore-conditions", "--json", code=ExitCode.BUDGET)
        assert all(r.method == "GET" for r in proxy.requests[before:]) and server.reports(refused) == []

        # a stricter round (epsilon 0.5 <= the cohort's 1.0) still fits the rest of the budget
        stricter = server.admin(
            "POST",
            "/rounds",
            {"cohort_id": cohort, "drafts": DRAFTS, "min_items": 2, "privacy": {**LAPLACE, "epsilon": 0.5}},
        )["round_id"]
        it = agent(env, "run", "--once", "--ignore-conditions", "--json")
        assert it["round"]["step"] == "queued", it
        (report,) = server.reports(stricter)
        assert report["privacy"]["epsilon"] == 0.5
        st = agent(env, "status", "--json")["privacy"]
        assert st["spent"]["epsilon"] == 2.5 and st["remaining_epsilon"] == 0.0
    aggregate = server.admin("GET", f"/aggregates/{stricter}", status=200)
    assert aggregate["n_devices"] == 1 and aggregate["drafts"]["d-yes"]["noise_variance"] > 0
