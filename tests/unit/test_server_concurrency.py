"""The in-flight request cap (``server.middleware.ConcurrencyLimit``) and the per-process SQLite write
queue (``server.db``): what they let through, in which order, and that they always give back what they
took (an error, a rollback, a broken connection)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from server import db
from server.middleware import ConcurrencyLimit


def _run_requests(limit: int, n: int, fail: set[int] = frozenset()) -> tuple[int, list[int]]:
    """``n`` requests through the cap around an app that waits until released; returns the most that
    were inside at once and the order they started answering in."""
    inside = 0
    most = 0
    answered: list[int] = []

    async def main() -> None:
        nonlocal inside, most
        gate = asyncio.Event()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            await gate.wait()
            inside -= 1
            if scope["i"] in fail:
                raise RuntimeError("route failed")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            answered.append(scope["i"])
            await send({"type": "http.response.body", "body": b"ok"})

        capped = ConcurrencyLimit(app, limit)

        async def send(_: dict[str, Any]) -> None:
            await asyncio.sleep(0)

        async def one(i: int) -> None:
            try:
                await capped({"type": "http", "i": i}, None, send)
            except RuntimeError:
                pass

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return most, answered


def test_at_most_limit_requests_are_inside_and_all_are_answered() -> None:
    most, answered = _run_requests(limit=3, n=20)
    assert most == 3
    assert sorted(answered) == list(range(20))


def test_a_failing_request_gives_its_slot_back() -> None:
    most, answered = _run_requests(limit=2, n=10, fail={0, 1, 2})
    assert most == 2 and sorted(answered) == list(range(3, 10))


def test_zero_means_no_cap() -> None:
    most, _ = _run_requests(limit=0, n=12)
    assert most == 12


def test_sqlite_writers_queue_and_every_path_releases_the_lock(tmp_path: Path) -> None:
    """An error inside a write transaction, a rollback and a plain commit all release the process
    write lock (a leak would make the next writer wait out the busy timeout and fail)."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    sessions = db.make_sessionmaker(engine)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    with pytest.raises(RuntimeError):
        with db.transaction(sessions) as s:
            s.execute(sa.text("INSERT INTO t VALUES (1)"))
            raise RuntimeError("route failed")
    with pytest.raises(sa.exc.IntegrityError):
        with db.transaction(sessions) as s:
            s.execute(sa.text("INSERT INTO t VALUES (2)"))
            s.execute(sa.text("INSERT INTO t VALUES (2)"))
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with db.transaction(sessions) as s:
                s.execute(sa.text("INSERT INTO t VALUES (:k)"), {"k": k})
        except BaseException as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(10, 50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 40
    engine.dispose()
