"""Database engine, sessions and migrations, for SQLite (embedded default) and PostgreSQL.

Contract: :func:`make_engine` returns an engine configured for safe concurrent use: on SQLite, WAL
journal, ``foreign_keys=ON`` and a busy timeout on every connection, transactions opened with
``BEGIN IMMEDIATE`` when asked (:func:`immediate`); on PostgreSQL, an optional ``schema`` put first on
the ``search_path`` (tests use a fresh schema per run). :func:`upgrade` runs the Alembic migrations shipped
in ``server/migrations``; :func:`check_current` raises :class:`NotReady` unless the database is at head.
Every request runs in one transaction (:func:`transaction`; :func:`core_transaction` without the ORM):
all or nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from server.errors import NotReady

__all__ = [
    "make_engine",
    "make_sessionmaker",
    "upgrade",
    "check_current",
    "current_revision",
    "head_revision",
    "transaction",
    "core_transaction",
    "is_sqlite",
    "create_schema",
    "drop_schema",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(
    url: str,
    *,
    schema: str | None = None,
    echo: bool = False,
    pool_size: int = 24,
    max_overflow: int = 8,
    wal_autocheckpoint: int | None = None,
) -> Engine:
    """An engine for ``url``; creates the SQLite file's directory; ``schema`` is PostgreSQL-only.

    ``pool_size + max_overflow`` connections at most (default 32, the API's in-flight request limit, so
    no admitted request waits for a connection); PostgreSQL connections are checked with a ping before
    use, so a restarted database is reconnected to without restarting the server. ``wal_autocheckpoint``
    (SQLite): WAL pages after which a commit checkpoints by itself (SQLite's default: 1000); the API
    raises it because its report writer checkpoints in the background (:mod:`server.groupcommit`)."""
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        _configure_sqlite(engine, wal_autocheckpoint)
        return engine
    connect_args: dict[str, Any] = {}
    if schema:
        if not _SCHEMA_RE.match(schema):
            raise ValueError(f"db_schema: not a plain lower-case identifier: {schema!r}")
        connect_args["options"] = f"-csearch_path={schema}"
    return sa.create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=max_overflow,
    )


def _configure_sqlite(engine: Engine, wal_autocheckpoint: int | None = None) -> None:
    # pysqlite's own transaction handling would emit BEGIN lazily (DEFERRED); we emit BEGIN ourselves so
    # writers can ask for BEGIN IMMEDIATE and never deadlock upgrading a read lock.
    #
    # Writers of one process queue on a Python lock before BEGIN IMMEDIATE: SQLite's own busy handler
    # polls with sleeps of up to 100 ms, so under load (dozens of request threads) a waiting writer can
    # miss the free lock for the whole busy timeout while others win it ("database is locked" after 30
    # s, measured with 64 concurrent enrollments). The lock is taken when the transaction begins (in the
    # thread that runs the route, never while waiting for one) and released when the connection goes
    # back to the pool, i.e. after COMMIT or ROLLBACK; writers of other processes still meet at SQLite's
    # lock and its busy timeout.
    write_lock = threading.Lock()

    def _release(record: Any) -> None:
        if record is not None and record.info.pop("arte_write_lock", False):
            write_lock.release()

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        if wal_autocheckpoint is not None:
            cur.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode == "IMMEDIATE" and not conn.info.get("arte_write_lock"):
            if not write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
                raise sa.exc.OperationalError("BEGIN IMMEDIATE", {}, TimeoutError("database is locked"))
            conn.info["arte_write_lock"] = True
        try:
            conn.exec_driver_sql(f"BEGIN {mode}")
        except BaseException:
            _release(conn.connection._connection_record)  # type: ignore[attr-defined]
            raise

    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        _release(record)

    @sa.event.listens_for(engine, "invalidate")
    def _on_invalidate(_dbapi_conn: Any, record: Any, _exc: Any) -> None:
        _release(record)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (the write lock is taken at once), so a
    read-then-write unit (an idempotent report, a job claim) cannot fail half-way with SQLITE_BUSY when
    another writer got in between; SQLite serializes writers anyway and WAL keeps readers of other
    connections unblocked. PostgreSQL runs at READ COMMITTED and relies on constraints and row locks.
    """
    session = factory()
    bind = session.get_bind()
    if is_sqlite(bind):
        session.bind = bind.execution_options(sqlite_begin="IMMEDIATE")  # type: ignore[union-attr]
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def core_transaction(engine: Engine) -> Iterator[sa.Connection]:
    """:func:`transaction` for Core statements on one connection (no ORM session): commit on success,
    roll back on any error; on SQLite ``BEGIN IMMEDIATE``."""
    if is_sqlite(engine):
        engine = engine.execution_options(sqlite_begin="IMMEDIATE")
    with engine.begin() as conn:
        yield conn


def _alembic_config(connection: sa.Connection) -> Any:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Run the migrations up to ``revision``; returns the revision the database is at afterwards."""

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)
    return current_revision(engine) or ""


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_current(engine: Engine) -> None:
    """Raise :class:`NotReady` unless the database is migrated to the head revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise NotReady(
            f"database is at revision {current or 'none'}, expected {head}: run `arte-server init`",
            current=current,
            head=head,
        )


def create_schema(url: str, schema: str) -> None:
    """Create a PostgreSQL schema (used to isolate test runs and deployments sharing a database)."""
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"schema: not a plain lower-case identifier: {schema!r}")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    engine.dispose()


def drop_schema(url: str, schema: str) -> None:
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"schema: not a plain lower-case identifier: {schema!r}")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    engine.dispose()
