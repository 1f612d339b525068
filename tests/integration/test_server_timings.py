"""Per-phase request timings for load tests (:mod:`server.timings`): off by default (no header, no
debug endpoint); when on, a report's answer says how long it waited for and spent in its group commit,
and the debug endpoint gives the process's GC, event-loop and commit counters."""

from __future__ import annotations

from pathlib import Path

from server.timings import PATH
from tests.support.server_support import Backend, build_fleet


def _phases(header: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=") for kv in header.split(","))}


def test_timings_are_off_by_default(sqlite_fleet) -> None:
    f = sqlite_fleet
    cohort = f.cohort(k=1)
    _, device = f.device(cohort)
    r = f.report(f.round(cohort), device, [("d0", 4, 1)])
    assert r.status_code == 200 and "x-arte-timing" not in r.headers
    assert f.client.get(PATH).status_code == 404


def test_a_report_answer_carries_its_phases_and_the_counters_add_up(backend: Backend, tmp_path: Path) -> None:
    f = build_fleet(backend, tmp_path, debug_timings=True)
    cohort = f.cohort(k=1)
    _, device = f.device(cohort)
    rnd = f.round(cohort)
    assert f.client.get(f"{PATH}?reset=1").status_code == 200
    phases = []
    for i in range(3):
        r = f.report(rnd, device, [("d0", 4, 1)], key="same")  # stored, then two re-sends
        assert r.status_code == 200, r.text
        phases.append(_phases(r.headers["x-arte-timing"]))
    for p in phases:
        assert {"srv", "adm", "body", "wq", "hop", "lock", "db", "commit", "wake", "gc", "blk", "n"} <= p.keys()
        assert p["n"] == 1
        named = sum(p[k] for k in ("adm", "body", "wq", "hop", "lock", "db", "commit", "wake"))
        assert 0 <= named <= p["srv"] + 3  # microseconds, rounded per phase
    routed = f.client.get(f"/api/v1/rounds/{rnd}/drafts", headers=device)  # any answer gets the total
    assert _phases(routed.headers["x-arte-timing"])["srv"] >= 0
    counters = f.client.get(PATH).json()
    assert counters["batches"] == 3 and counters["mean_batch"] == 1
    assert counters["commit_max_ms"] >= counters["commit_mean_ms"] >= 0
    assert counters["gc_ms"] >= 0 and counters["loop_blocked_ms"] >= 0
    f.engine.dispose()
