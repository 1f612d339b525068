"""The server on a real uvicorn on loopback (a thread, a free port, readiness polled, never slept on),
driven over HTTP by httpx as a device would; and `arte-server init` + `arte-server serve` as processes on
the embedded SQLite default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from arte import wire
from server import db
from tests.support.live_server import free_port, wait_ready
from tests.support.server_support import Backend, make_admin_key

API = "/api/v1"


@pytest.fixture
def live(backend: Backend, tmp_path: Path) -> Iterator[tuple[str, str]]:
    import uvicorn

    from server.app import create_app

    settings = backend.settings(tmp_path / "data", rate_limit_per_s=0)
    engine = db.make_engine(settings.resolved_database_url(), schema=settings.db_schema)
    db.upgrade(engine)
    admin_key = make_admin_key(db.make_sessionmaker(engine))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, engine=engine),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url, admin_key
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.dispose()


def test_device_flow_over_loopback(live: tuple[str, str]) -> None:
    url, admin_key = live
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
    task = admin.post(f"{API}/tasks", json={"name": "t", "instruction": "Answer."}).json()["task_id"]
    cohort = admin.post(
        f"{API}/cohorts",
        json={
            "name": "c",
            "task_id": task,
            "student_model": "default",
            "profile_class": "laptop",
            "min_devices": 1,
        },
    ).json()["cohort_id"]
    token = admin.post(f"{API}/tokens", json={"cohort_id": cohort}).json()["token"]
    drafts = [
        {"id": f"d{i}", "question": "q", "rationale": "r <ans>a</ans>", "answer": "a"} for i in range(4)
    ]
    admin.post(f"{API}/rounds", json={"cohort_id": cohort, "drafts": drafts}).raise_for_status()
    content = "".join(json.dumps({"input": f"q{i}", "target": "a"}) + "\n" for i in range(200)).encode()
    admin.post(
        f"{API}/datasets", json={"cohort_id": cohort, "content": content.decode(), "teacher": "t"}
    ).raise_for_status()

    enrolled = httpx.post(
        f"{url}{API}/enroll",
        json=wire.to_wire(
            wire.EnrollRequest(token=token, device_name="pi", profile_id="rpi5", hardware={"cores": 4})
        ),
    )
    assert enrolled.status_code == 201
    resp = wire.from_wire(wire.EnrollResponse, enrolled.json())
    dev = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {resp.device_key}"}, timeout=10)
    info = wire.from_wire(wire.RoundInfo, dev.get(f"{API}/rounds/current").json())
    got = wire.from_wire(wire.RoundDrafts, dev.get(f"{API}/rounds/{info.round_id}/drafts").json())
    report = wire.Report(
        idempotency_key="r1",
        mode=info.mode,
        scores=[wire.DraftScoreMsg(d["id"], 10.0, float(i)) for i, d in enumerate(got.drafts)],
    )
    r1 = wire.from_wire(
        wire.ReportReceipt,
        dev.post(f"{API}/rounds/{info.round_id}/reports", json=wire.to_wire(report)).json(),
    )
    r2 = wire.from_wire(
        wire.ReportReceipt,
        dev.post(f"{API}/rounds/{info.round_id}/reports", json=wire.to_wire(report)).json(),
    )
    assert not r1.duplicate and r2.duplicate and r1.report_id == r2.report_id

    man = wire.from_wire(wire.DatasetManifest, dev.get(f"{API}/datasets/latest").json())
    first = dev.get(f"{API}/datasets/{man.dataset_id}/content", headers={"Range": "bytes=0-999"})
    assert first.status_code == 206
    rest = dev.get(
        f"{API}/datasets/{man.dataset_id}/content",
        headers={"Range": f"bytes={len(first.content)}-", "If-Range": first.headers["etag"]},
    )
    assert rest.status_code == 206 and first.content + rest.content == content
    big = dev.post(
        f"{API}/rounds/{info.round_id}/reports",
        content=b"{" + b" " * (2 << 20) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert big.status_code == 413 and big.json()["error"]["type"] == "payload_too_large"
    agg = admin.get(f"{API}/aggregates/{info.round_id}").json()
    assert agg["meets_k"] and agg["drafts"]["d3"]["score"] == pytest.approx(0.3)


def test_cli_init_then_serve_on_the_embedded_default(tmp_path: Path) -> None:
    env = {**os.environ, "ARTE_SERVER_DATA_DIR": str(tmp_path / "srv"), "ARTE_SERVER_RATE_LIMIT_PER_S": "0"}
    env.pop("ARTE_SERVER_DATABASE_URL", None)
    exe = [sys.executable, "-m", "server.cli"]
    out = subprocess.run([*exe, "init", "--json"], env=env, capture_output=True, text=True, check=True)
    init = json.loads(out.stdout)
    assert init["database"].startswith("sqlite:///") and init["admin_key"].startswith("arte_ak_")
    assert (tmp_path / "srv" / "arte.db").is_file()
    again = json.loads(
        subprocess.run([*exe, "init", "--json"], env=env, capture_output=True, text=True, check=True).stdout
    )
    assert again["admin_key"] is None  # printed once only
    port = free_port()
    proc = subprocess.Popen(
        [*exe, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc=proc)
        h = {"Authorization": f"Bearer {init['admin_key']}"}
        assert httpx.get(f"{url}{API}/tasks", headers=h).json() == []
        assert httpx.get(f"{url}{API}/tasks").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
