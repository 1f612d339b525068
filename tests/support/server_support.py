"""Fixtures and helpers for the fleet server tests (a pytest plugin loaded by ``tests/conftest.py``;
imports the server lazily so other tests do not pay for it).

``backend`` is parametrized over SQLite (a file under tmp_path) and PostgreSQL (a fresh schema per test
in the database at ``ARTE_TEST_POSTGRES_URL``, dropped afterwards, so parallel runs never collide; the
PostgreSQL case skips, saying so, without that variable); ``other_backend`` is a second, empty database
of the same kind (two apps compared side by side). ``fleet`` gives a migrated database, an app
on FastAPI's TestClient with an injectable clock, the admin key, and helpers that build tasks, cohorts,
rounds and enrolled devices through the HTTP API. :class:`Ids` numbers random ids so that two runs'
answers and rows compare.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
_ID = re.compile(r"\b[a-z]{3}_[0-9a-f]{32}\b")


@dataclass
class Backend:
    name: str
    url: str
    schema: str | None = None

    def settings(self, data_dir: Path, **overrides: Any) -> Any:
        from server.settings import ServerSettings

        return ServerSettings(data_dir=data_dir, database_url=self.url, db_schema=self.schema, **overrides)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'arte.db'}")
        return
    from server import db

    url = request.getfixturevalue("postgres_url")
    schema = f"arte_test_{os.getpid()}_{secrets.token_hex(4)}"
    db.create_schema(url, schema)
    try:
        yield Backend("postgres", url, schema)
    finally:
        db.drop_schema(url, schema)


@pytest.fixture
def other_backend(backend: Backend, tmp_path: Path) -> Iterator[Backend]:
    """A second, empty database of the same kind as ``backend``."""
    if backend.name == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'other.db'}")
        return
    from server import db

    schema = f"{backend.schema}_b"
    db.create_schema(backend.url, schema)
    try:
        yield Backend("postgres", backend.url, schema)
    finally:
        db.drop_schema(backend.url, schema)


class Ids:
    """Numbers each id in the order it is first seen, so two runs' answers compare."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        return _ID.sub(lambda m: self.seen.setdefault(m[0], f"<{m[0][:3]}{len(self.seen)}>"), text)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    return Backend("sqlite", f"sqlite:///{tmp_path / 'arte.db'}")


class Clock:
    """A settable UTC clock (nothing in the tests waits on wall time)."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_admin_key(sessions: Any) -> str:
    from server import db, security
    from server.tables import AdminKey, new_id

    row_id = new_id("adm")
    key, key_hash = security.new_secret("ak", row_id)
    with db.transaction(sessions) as s:
        s.add(AdminKey(id=row_id, key_hash=key_hash, created_at=START))
    return key


DRAFT_TEMPLATE = {
    "question": "Is 'Messi kicked a goal' plausible?",
    "rationale": "Soccer. <ans>yes</ans>",
    "answer": "yes",
}


def drafts(n: int, prefix: str = "d") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", **DRAFT_TEMPLATE} for i in range(n)]


@dataclass
class Fleet:
    """A migrated database, its app on a TestClient, the admin key and builders."""

    backend: Backend
    settings: Any
    engine: Any
    sessions: Any
    clock: Clock
    app: Any
    client: Any
    admin_key: str
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def _n(self) -> int:
        self.counter[0] += 1
        return self.counter[0]

    def ok(self, resp: Any, status: int = 200) -> Any:
        assert resp.status_code == status, (resp.status_code, resp.text)
        return resp.json()

    def task(self) -> str:
        body = {
            "name": f"task{self._n()}",
            "instruction": "Is the sentence plausible?",
            "seeds": [
                {"input": "Joao Moutinho caught the screen pass.", "choices": ["yes", "no"], "answer": "no"}
            ],
        }
        return self.ok(self.client.post("/api/v1/tasks", json=body, headers=self.admin), 201)["task_id"]

    def cohort(self, k: int = 2, privacy: dict[str, Any] | None = None) -> str:
        body = {
            "name": f"cohort{self._n()}",
            "task_id": self.task(),
            "student_model": "default",
            "profile_class": "laptop-cpu",
            "min_devices": k,
        }
        if privacy:
            body["privacy"] = privacy
        return self.ok(self.client.post("/api/v1/cohorts", json=body, headers=self.admin), 201)["cohort_id"]

    def token(self, cohort_id: str, ttl_s: int | None = None) -> str:
        body: dict[str, Any] = {"cohort_id": cohort_id}
        if ttl_s:
            body["ttl_s"] = ttl_s
        return self.ok(self.client.post("/api/v1/tokens", json=body, headers=self.admin), 201)["token"]

    def device(self, cohort_id: str) -> tuple[str, dict[str, str]]:
        body = {
            "token": self.token(cohort_id),
            "device_name": f"dev{self._n()}",
            "profile_id": "laptop-cpu",
            "hardware": {"cores": 2},
        }
        r = self.ok(self.client.post("/api/v1/enroll", json=body), 201)
        return r["device_id"], {"Authorization": f"Bearer {r['device_key']}"}

    def round(self, cohort_id: str, n_drafts: int = 3, **kw: Any) -> str:
        body = {"cohort_id": cohort_id, "drafts": drafts(n_drafts), **kw}
        return self.ok(self.client.post("/api/v1/rounds", json=body, headers=self.admin), 201)["round_id"]

    def report(
        self,
        round_id: str,
        headers: dict[str, str],
        scores: list[tuple[str, float, float]],
        key: str | None = None,
        **kw: Any,
    ) -> Any:
        body = {
            "idempotency_key": key or f"k{self._n()}",
            "mode": "cot-choice",
            "scores": [{"draft_id": d, "n_items": n, "n_correct": c} for d, n, c in scores],
            **kw,
        }
        return self.client.post(f"/api/v1/rounds/{round_id}/reports", json=body, headers=headers)

    def dataset(self, cohort_id: str, content: str = '{"input": "q", "target": "a"}\n') -> Any:
        body = {"cohort_id": cohort_id, "content": content, "teacher": "SmolLM2-135M-Instruct"}
        return self.ok(self.client.post("/api/v1/datasets", json=body, headers=self.admin), 201)

    def populate(self) -> dict[str, str]:
        """One of everything (a cohort with k=1, an enrolled device, a round it reported to, a dataset), so
        the ids a fuzzer reads from list answers exist; returns the device's headers."""
        cohort = self.cohort(k=1)
        _, device = self.device(cohort)
        rnd = self.round(cohort, n_drafts=3)
        self.ok(self.report(rnd, device, [("d0", 5, 2)]))
        self.dataset(cohort)
        return device


def build_fleet(backend: Backend, tmp_path: Path, **overrides: Any) -> Fleet:
    from fastapi.testclient import TestClient

    from server import db
    from server.app import create_app

    settings = backend.settings(tmp_path / "data", **{"rate_limit_per_s": 0, **overrides})
    engine = db.make_engine(settings.resolved_database_url(), schema=settings.db_schema)
    db.upgrade(engine)
    sessions = db.make_sessionmaker(engine)
    clock = Clock()
    app = create_app(settings, engine=engine, clock=clock)
    client = TestClient(app, raise_server_exceptions=False)
    return Fleet(backend, settings, engine, sessions, clock, app, client, make_admin_key(sessions))


@pytest.fixture
def fleet(backend: Backend, tmp_path: Path) -> Iterator[Fleet]:
    f = build_fleet(backend, tmp_path)
    yield f
    f.client.close()
    f.engine.dispose()


@pytest.fixture
def sqlite_fleet(sqlite_backend: Backend, tmp_path: Path) -> Iterator[Fleet]:
    f = build_fleet(sqlite_backend, tmp_path)
    yield f
    f.client.close()
    f.engine.dispose()


def scrape(fleet: Fleet, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one /metrics response."""
    r = fleet.client.get("/metrics", headers=fleet.admin if headers is None else headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


def bad_report_cases(rnd_drafts: list[str]) -> list[tuple[str, dict, int, str]]:
    ok = {"draft_id": "d0", "n_items": 10, "n_correct": 5}
    base = {"idempotency_key": "k", "mode": "cot-choice"}
    return [
        ("negative items", {**base, "scores": [{**ok, "n_items": -1}]}, 400, "scores[0].n_items"),
        ("negative correct", {**base, "scores": [{**ok, "n_correct": -1}]}, 400, "scores[0].n_correct"),
        (
            "over-count",
            {**base, "scores": [ok, {**ok, "draft_id": "d1", "n_correct": 11}]},
            400,
            "scores[1].n_correct",
        ),
        ("unknown draft", {**base, "scores": [{**ok, "draft_id": "nope"}]}, 400, "scores[0].draft_id"),
        ("duplicate draft", {**base, "scores": [ok, ok]}, 400, "scores[1].draft_id"),
        ("wrong mode", {**base, "mode": "generate", "scores": [ok]}, 400, "mode"),
        ("bad mode", {**base, "mode": "guess", "scores": [ok]}, 422, "mode"),
        ("no scores", {**base, "scores": []}, 422, "scores"),
        ("missing key", {"mode": "cot-choice", "scores": [ok]}, 422, "idempotency_key"),
        ("string count", {**base, "scores": [{**ok, "n_items": "10"}]}, 422, "scores[0].n_items"),
        ("unknown field", {**base, "scores": [ok], "texts": ["private"]}, 422, "texts"),
        ("NUL in key", {**base, "idempotency_key": "a\x00b", "scores": [ok]}, 422, "idempotency_key"),
        ("huge count", {**base, "scores": [{**ok, "n_items": 1e300}]}, 422, "scores[0].n_items"),
    ]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
