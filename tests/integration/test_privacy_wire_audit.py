"""End-to-end wire audit: nothing private about a device's data is in any byte the agent sends.

The real agent (`edge-agent enroll`, then `edge-agent run --once`) talks to the real `arte-server serve`
on loopback THROUGH the recording proxy (:class:`tests.support.privacy_audit.RecordingProxy`), which keeps every
request byte (URL, headers, body). The device's private data are real BIG-bench items (date
understanding: distinctive texts and answers such as ``05/01/2021``; sports understanding: short
sentences), vendored unchanged in ``tests/data/bigbench_sample`` so the audit runs in CI on a clean clone. For both scoring modes (``loglik``, ``generate``) and with local DP off and on (the round
requires the analytic Gaussian), :func:`tests.support.privacy_audit.assert_no_leaks` finds none of the private
items' text (nor any 5-word window of it), answers, ids or sha256 digests in what was sent, and the
report the proxy saw is the one the server stored and aggregated.

* ``test_agent_sends_nothing_private`` (not slow): the copying fake student, injected where the CLI
  opens its student (``edge_agent.cli._student_opener``, the agent's extension point); everything else —
  enrollment, the loop, scoring, the privacy step, the outbox, the HTTP client — is the real code path
  that builds and sends the report.
* ``test_the_audit_catches_leaks_through_the_same_proxy``: the audit can fail — text, an answer, an id
  and a hash injected through the same proxy next to a clean run are each caught, and only those.
* ``test_real_model_sends_nothing_private`` (slow): `edge-agent` as subprocesses with the embedded model
  (llama.cpp), 2 drafts x 4 validation items: loglik without DP, generate with DP.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from click.testing import CliRunner

import edge_agent.cli as cli  # noqa: E402
from arte.tasks import Example, load_task  # noqa: E402
from tests.support.fakes import CopyingStudent  # noqa: E402
from tests.support.live_server import ROOT, LiveServer  # noqa: E402
from tests.support.privacy_audit import RecordingProxy, SentRequest, assert_no_leaks, find_leaks, needles_for  # noqa: E402

GAUSSIAN = {"mechanism": "gaussian", "epsilon": 2.0, "delta": 1e-6}
DP = {"off": None, "on": GAUSSIAN}
PUBLIC_EXAMPLES = range(0, 4)  # drafts are written from these (public: the teacher's side)
PRIVATE_EXAMPLES = range(100, 108)  # the device's data: 4 validation + 4 holdout items


@dataclass
class Case:
    """One device's private data and the public drafts of its round."""

    data: Path
    items: list[Example]  # every private item (validation and holdout)
    drafts: list[dict[str, Any]]
    public: list[str]  # what the server already has (drafts, task description)


def private_case(data_dir: Path, task: str, tmp: Path, n_drafts: int) -> Case:
    """Real BIG-bench items of ``task`` (``tests/data/bigbench_sample``: unchanged examples of the
    task.json, ids = their indices there) as the private data, and drafts written from public ones."""
    raw = json.loads((data_dir / "bigbench_sample" / f"{task}.json").read_text())
    examples = {int(ex["id"].rsplit(":", 1)[1]): ex for ex in raw["examples"]}
    if task == "sports_understanding":  # the development drafts (written from examples 838, 882, ...)
        drafts = [json.loads(line) for line in (data_dir / "drafts_sports_understanding.jsonl").open()][
            :n_drafts
        ]
    else:
        drafts = []
        for i in list(PUBLIC_EXAMPLES)[:n_drafts]:
            ex = examples[i]
            ans = max(ex["target_scores"], key=ex["target_scores"].get)
            drafts.append(
                {
                    "id": f"{task}-q{i}",
                    "question": ex["input"],
                    "answer": ans,
                    "rationale": f"Count the days from the date given, step by step. <ans>{ans}</ans>",
                }
            )
    data = tmp / f"private_{task}.jsonl"
    data.write_text("".join(json.dumps(examples[i]) + "\n" for i in PRIVATE_EXAMPLES))
    items = list(load_task(data).examples)
    assert [x.id for x in items] == [f"{task}:{i}" for i in PRIVATE_EXAMPLES]
    public = [json.dumps(d) for d in drafts] + [raw.get("description", "")]
    return Case(data, items, drafts, public)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("fleet"))
    yield s
    s.stop()


def open_round(server: LiveServer, case: Case, mode: str, privacy: dict[str, Any] | None) -> tuple[str, str]:
    """A cohort (requiring ``privacy``) with one round of the case's drafts; returns (round id, token)."""
    n = len(server.admin("GET", "/cohorts", status=200))
    task = server.admin("POST", "/tasks", {"name": f"audit{n}", "instruction": "Answer the question."})[
        "task_id"
    ]
    body: dict[str, Any] = {
        "name": f"audit{n}",
        "task_id": task,
        "student_model": "default",
        "profile_class": "laptop-cpu",
        "min_devices": 1,
    }
    if privacy:
        body["privacy"] = privacy
    cohort = server.admin("POST", "/cohorts", body)["cohort_id"]
    rnd = server.admin(
        "POST",
        "/rounds",
        {"cohort_id": cohort, "drafts": case.drafts, "mode": mode, "max_new_tokens": 24, "min_items": 2},
    )["round_id"]
    return rnd, server.admin("POST", "/tokens", {"cohort_id": cohort})["token"]


def in_process(env: dict[str, str]) -> Any:
    """`edge-agent ARGS` through click's runner (the CLI's own code, in this process)."""

    def run(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(cli.main, list(args), env=env)
        return r.exit_code, r.stdout if r.exit_code == 0 else r.output

    return run


def as_subprocess(env: dict[str, str]) -> Any:
    """`edge-agent ARGS` as its own process (the installed entry point, the real student)."""
    exe = str(Path(sys.executable).parent / "edge-agent")
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def run(*args: str) -> tuple[int, str]:
        r = subprocess.run([exe, *args], capture_output=True, text=True, env=full, timeout=300)
        return r.returncode, r.stdout if r.returncode == 0 else r.stdout + r.stderr

    return run


def audited_run(
    server: LiveServer, case: Case, mode: str, dp: str, state_dir: Path, make_agent: Any
) -> tuple[list[SentRequest], dict[str, Any], str]:
    """Enroll and run one iteration through the proxy; check the report arrived as sent. Returns the
    requests the agent sent, its stored report and the round id."""
    rnd, token = open_round(server, case, mode, DP[dp])
    agent = make_agent({"EDGE_AGENT_STATE_DIR": str(state_dir)})
    with RecordingProxy(server.url) as proxy:
        code, out = agent(
            "enroll",
            "--server",
            proxy.url,
            "--token",
            token,
            "--profile",
            "laptop-cpu",
            "--data",
            str(case.data),
            "--json",
        )
        assert code == 0, out
        code, out = agent("run", "--once", "--ignore-conditions", "--json")
        assert code == 0, out
        it = json.loads(out)
        assert it["round"]["step"] == "queued" and it["round"]["n_items"] == 4, it
        assert it["delivery"]["pending"] == 0 and len(it["delivery"]["delivered"]) == 1, it
        sent = list(proxy.requests)
    (report,) = server.reports(rnd)
    posted = [r for r in sent if r.method == "POST" and r.url == f"/api/v1/rounds/{rnd}/reports"]
    assert len(posted) == 1, [(r.method, r.url) for r in sent]
    body = json.loads(posted[0].body)
    assert body["scores"] == report["scores"] and body["privacy"] == report["privacy"]  # audited = stored
    assert {s["draft_id"] for s in body["scores"]} == {d["id"] for d in case.drafts}
    if dp == "on":
        assert body["privacy"] == GAUSSIAN
        assert any(not float(s["n_correct"]).is_integer() for s in body["scores"])  # noised
    else:
        assert body["privacy"]["mechanism"] == "none"
        assert all(float(s["n_correct"]).is_integer() for s in body["scores"])
    assert any(r.method == "POST" and r.url == "/api/v1/enroll" for r in sent)
    agg = server.admin("GET", f"/aggregates/{rnd}", status=200)  # the server reads it back
    assert agg["n_devices"] == 1 and set(agg["drafts"]) == {d["id"] for d in case.drafts}
    for d in agg["drafts"].values():
        assert d["ci_low"] <= d["accuracy"] <= d["ci_high"] and (d["noise_variance"] > 0) == (dp == "on")
    return sent, report, rnd


def check_no_leaks(sent: list[SentRequest], case: Case) -> None:
    assert_no_leaks(sent, case.items, public=case.public)
    for r in sent:  # nor where the data lives
        for part, data in r.parts():
            assert case.data.name.encode() not in data and str(case.data.parent).encode() not in data, part


@pytest.mark.parametrize("dp", ["off", "on"])
@pytest.mark.parametrize("mode", ["loglik", "generate"])
@pytest.mark.parametrize("task", ["date_understanding", "sports_understanding"])
def test_agent_sends_nothing_private(
    server: LiveServer,
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
    mode: str,
    dp: str,
) -> None:
    monkeypatch.setattr(cli, "_student_opener", lambda model: lambda profile, adapter: CopyingStudent())
    case = private_case(data_dir, task, tmp_path, n_drafts=3)
    sent, _, _ = audited_run(server, case, mode, dp, tmp_path / "agent", in_process)
    assert len(sent) >= 5  # enroll, current round, drafts, report, dataset check (at least)
    check_no_leaks(sent, case)


def test_the_audit_catches_leaks_through_the_same_proxy(
    server: LiveServer, tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_student_opener", lambda model: lambda profile, adapter: CopyingStudent())
    case = private_case(data_dir, "date_understanding", tmp_path, n_drafts=2)
    rnd, token = open_round(server, case, "loglik", GAUSSIAN)
    agent = in_process({"EDGE_AGENT_STATE_DIR": str(tmp_path / "agent")})
    kinds: dict[str, dict[str, str]] = {}
    for n in needles_for(case.items, public=case.public):  # an item with every kind of private string
        kinds.setdefault(n.item_id, {}).setdefault(n.kind, n.text.strip())
    item = next(
        x for x in case.items if set(kinds.get(x.id, {})) >= {"text", "window", "answer", "id", "hash"}
    )
    answer, window = item.targets[0], kinds[item.id]["window"]
    with RecordingProxy(server.url) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        assert (
            agent(
                "enroll",
                "--server",
                proxy.url,
                "--token",
                token,
                "--profile",
                "laptop-cpu",
                "--data",
                str(case.data),
                "--json",
            )[0]
            == 0
        )
        assert agent("run", "--once", "--ignore-conditions", "--json")[0] == 0
        clean = len(proxy.requests)
        report = next(r for r in proxy.requests if r.url.endswith("/reports"))
        key = dict(report.headers)["Authorization"]
        leaky = json.loads(report.body)
        injected = {
            # the agent's own report with a "debug" field carrying the item's text (the server refuses it,
            # but the bytes went out)
            "text": client.post(
                report.url,
                content=json.dumps({**leaky, "debug": item.input}),
                headers={"Authorization": key, "Content-Type": "application/json"},
            ),
            # the item's answer hidden in an idempotency key
            "answer": client.post(
                report.url, json={**leaky, "idempotency_key": f"k-{answer}"}, headers={"Authorization": key}
            ),
            # the item's id in a query string
            "id": client.get(f"/api/v1/rounds/current?item={item.id}", headers={"Authorization": key}),
            # a "pseudonymised" item: sha256 of its text, in a header
            "hash": client.get(
                "/api/v1/rounds/current",
                headers={"Authorization": key, "X-Trace": hashlib.sha256(item.input.encode()).hexdigest()},
            ),
            # five words of it, gzip-compressed
            "window": client.post(
                "/api/v1/metrics",
                content=gzip.compress(window.encode()),
                headers={"Authorization": key, "Content-Encoding": "gzip"},
            ),
        }
        sent = list(proxy.requests)
    assert len(sent) == clean + len(injected)
    check_no_leaks(sent[:clean], case)
    leaks = find_leaks(sent, case.items, public=case.public)
    assert {x.request for x in leaks} == set(range(clean, clean + len(injected))), [str(x) for x in leaks]
    by_request = {i: {x.needle.kind for x in leaks if x.request == i} for i in range(clean, len(sent))}
    assert [kind in by_request[clean + n] for n, kind in enumerate(injected)] == [True] * len(injected), (
        by_request
    )
    assert {x.needle.item_id for x in leaks if x.needle.kind in ("answer", "id", "hash")} == {item.id}
    assert (
        server.reports(rnd)[0]["scores"] == json.loads(report.body)["scores"]
    )  # the leaky copies were refused


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "dp"), [("loglik", "off"), ("generate", "on")])
def test_real_model_sends_nothing_private(
    server: LiveServer,
    tmp_path: Path,
    data_dir: Path,
    default_model: Any,
    mode: str,
    dp: str,
) -> None:
    """Both modes and both DP settings with the real student, in two runs (~10-20 s each on an idle
    2-core machine; the DP step does not touch scoring, and the fast test covers every combination)."""
    case = private_case(data_dir, "sports_understanding", tmp_path, n_drafts=2)
    sent, report, _ = audited_run(server, case, mode, dp, tmp_path / "agent", as_subprocess)
    check_no_leaks(sent, case)
    assert report["mode"] == mode
