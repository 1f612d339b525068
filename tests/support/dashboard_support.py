"""A seeded fleet for the dashboard and metrics tests, built through the real HTTP API.

:func:`seed_fleet` takes any httpx-style client (FastAPI's TestClient or an ``httpx.Client`` on a live
server), the admin headers, the server's settable clock and its session factory. It creates two
cohorts, five devices (one revoked), three rounds (one closed) with reports, three datasets, before/
after metrics over several days, and jobs in every state: ``aggregate`` jobs run to ``succeeded`` by
the real :class:`server.worker.Worker`, a ``tailor`` job claimed and failed through the queue as a
worker records a failed attempt, an ``elicit`` job claimed (``running``), one ``queued`` and one
cancelled through the API. The clock moves a day between steps so the charts have a time axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support.server_support import Clock, drafts

DAY = 24 * 3600


@dataclass
class Seeded:
    cohorts: dict[str, str] = field(default_factory=dict)  # name -> id
    devices: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # name -> (id, headers)
    rounds: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    revoked: str = ""


def _ok(resp: Any, status: int = 200) -> Any:
    assert resp.status_code == status, (resp.request.method, str(resp.request.url), resp.status_code, resp.text)
    return resp.json()


def seed_fleet(client: Any, admin: dict[str, str], clock: Clock, settings: Any, sessions: Any) -> Seeded:
    """Build the fleet described in the module docstring; returns the ids it created."""
    from server import queue
    from server.worker import Worker

    out = Seeded()
    api = "/api/v1"

    def post(path: str, body: dict[str, Any], headers: dict[str, str] = admin, status: int = 201) -> Any:
        return _ok(client.post(api + path, json=body, headers=headers), status)

    for name, task, k in (("pi5-sports", "sports_understanding", 2), ("laptops-navigate", "navigate", 1)):
        task_id = post("/tasks", {"name": task, "instruction": f"Answer the {task} question."})["task_id"]
        out.cohorts[name] = post(
            "/cohorts",
            {"name": name, "task_id": task_id, "student_model": "default", "profile_class": "rpi5",
             "min_devices": k},
        )["cohort_id"]
    pi5, laptops = out.cohorts["pi5-sports"], out.cohorts["laptops-navigate"]
    for name, cohort in (("pi5-kitchen", pi5), ("pi5-garage", pi5), ("pi5-attic", pi5),
                         ("laptop-ana", laptops), ("laptop-bo", laptops)):
        token = post("/tokens", {"cohort_id": cohort})["token"]
        r = post("/enroll", {"token": token, "device_name": name, "profile_id": "rpi5", "agent_version": "0.1.0"},
                 headers={})
        out.devices[name] = (r["device_id"], {"Authorization": f"Bearer {r['device_key']}"})

    def report(round_id: str, device: str, n_correct: float) -> None:
        body = {"idempotency_key": f"{round_id}-{device}", "mode": "cot-choice",
                "scores": [{"draft_id": "d0", "n_items": 10, "n_correct": n_correct},
                           {"draft_id": "d1", "n_items": 10, "n_correct": 10 - n_correct}]}
        post(f"/rounds/{round_id}/reports", body, headers=out.devices[device][1], status=200)

    def dataset(cohort: str, round_id: str, n: int) -> str:
        content = "".join(f'{{"input": "q{i}", "target": "a{i}"}}\n' for i in range(n))
        return post("/datasets", {"cohort_id": cohort, "round_id": round_id, "content": content,
                                  "teacher": "SmolLM2-135M-Instruct"})["dataset_id"]

    def metrics(device: str, dataset_id: str, before: float, after: float) -> None:
        body = {"idempotency_key": f"m-{dataset_id}", "dataset_id": dataset_id, "adapter_version": dataset_id[:12],
                "before": {"zero_shot": before, "three_shot": before + 0.05, "n_items": 40},
                "after": {"zero_shot": after, "three_shot": after + 0.05, "n_items": 40},
                "kept": after > before, "train_seconds": 42.0}
        post("/metrics", body, headers=out.devices[device][1], status=200)

    r1 = post("/rounds", {"cohort_id": pi5, "drafts": drafts(3)})["round_id"]
    for i, dev in enumerate(("pi5-kitchen", "pi5-garage", "pi5-attic")):
        report(r1, dev, 4 + i)
    ds1 = dataset(pi5, r1, 12)
    clock.advance(DAY)
    for dev, (b, a) in {"pi5-kitchen": (0.40, 0.55), "pi5-garage": (0.35, 0.50), "pi5-attic": (0.45, 0.42)}.items():
        metrics(dev, ds1, b, a)
    _ok(client.post(f"{api}/rounds/{r1}/close", headers=admin))

    clock.advance(DAY)
    r2 = post("/rounds", {"cohort_id": pi5, "drafts": drafts(3)})["round_id"]
    report(r2, "pi5-kitchen", 7)
    report(r2, "pi5-garage", 6)
    clock.advance(60)
    r3 = post("/rounds", {"cohort_id": laptops, "drafts": drafts(2)})["round_id"]
    report(r3, "laptop-ana", 5)
    report(r3, "laptop-bo", 8)
    ds2 = dataset(pi5, r2, 20)
    ds3 = dataset(laptops, r3, 8)
    clock.advance(DAY)
    metrics("pi5-kitchen", ds2, 0.55, 0.63)
    metrics("pi5-garage", ds2, 0.50, 0.61)
    metrics("laptop-ana", ds3, 0.30, 0.48)
    metrics("laptop-bo", ds3, 0.33, 0.31)
    clock.advance(3600)
    out.revoked = out.devices["laptop-bo"][0]
    _ok(client.post(f"{api}/devices/{out.revoked}/revoke", headers=admin))

    worker = Worker(settings, sessions, worker_id="dashboard-test", clock=clock, heartbeat_thread=False)
    for rnd, cohort in ((r1, pi5), (r2, pi5)):
        job = post("/jobs", {"kind": "aggregate", "cohort_id": cohort, "round_id": rnd})["job_id"]
        assert worker.run_once() == job
    # a tailor job whose attempt failed, recorded as the worker records a failure that is not retried
    job = post("/jobs", {"kind": "tailor", "cohort_id": pi5, "max_attempts": 1})["job_id"]
    claim = queue.claim(sessions, "dashboard-test", clock())
    assert claim is not None and claim.job_id == job
    assert queue.fail(sessions, claim, "teacher model not found: no-teacher.gguf", clock(), retry=False) == "failed"
    job = post("/jobs", {"kind": "elicit", "cohort_id": laptops})["job_id"]
    claim = queue.claim(sessions, "dashboard-test", clock())
    assert claim is not None and claim.job_id == job
    post("/jobs", {"kind": "aggregate", "cohort_id": laptops, "round_id": r3})
    job = post("/jobs", {"kind": "aggregate", "cohort_id": laptops, "round_id": r3})["job_id"]
    _ok(client.post(f"{api}/jobs/{job}/cancel", headers=admin))
    clock.advance(600)
    # one device contacts the server again now, so "last contact" differs between devices
    _ok(client.get(f"{api}/devices/me", headers=out.devices["pi5-kitchen"][1]))

    out.rounds = [r1, r2, r3]
    out.datasets = [ds1, ds2, ds3]
    return out
