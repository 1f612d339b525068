"""``arte-server``: set up, serve, work, and administer the fleet from the shell.

Commands: ``init`` (create the database, run migrations, create the admin key and print it once),
``serve`` (uvicorn), ``worker`` (run jobs), and ``tasks``/``cohorts``/``tokens``/``rounds``/
``aggregates``/``jobs``/``devices`` admin groups (list/show/create and a few actions) that work on the
database directly; ``campaigns`` (automatic rounds), ``adapters`` (lineage, rollback) and ``service install``
(systemd units) live in :mod:`server.cli_campaigns`. Every command takes ``--json`` and then prints exactly one JSON document on stdout;
logs go to stderr.

Exit codes: :class:`server.cli_common.Exit` (shown by ``arte-server --help``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import click
import sqlalchemy as sa
import uvicorn

from server import db, security
from server.cli_admin import aggregates, cohorts, devices, jobs, rounds, tasks, tokens
from server.cli_campaigns import adapters, campaigns, service
from server.cli_common import (
    Ctx,
    Exit,
    emit,
    fail,
    json_option,
)
from server.errors import NotReady
from server.tables import AdminKey, new_id, utcnow
from server.worker import Worker

__all__ = ["Exit", "main"]


@click.group(epilog="\b\nExit codes:\n" + Exit.help_text())
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="State directory (env ARTE_SERVER_DATA_DIR; default ~/.cache/arte-edge/server).",
)
@click.option(
    "--database-url",
    default=None,
    help="SQLAlchemy URL (env ARTE_SERVER_DATABASE_URL; default SQLite under the data dir).",
)
@click.option("--log-level", default="INFO", show_default=True, help="Logging level for stderr.")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, database_url: str | None, log_level: str) -> None:
    """ARTE Edge fleet server."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    ctx.obj = Ctx({"data_dir": data_dir, "database_url": database_url})


@main.command()
@click.option("--rotate-admin-key", is_flag=True, help="Revoke existing admin keys and print a new one.")
@json_option
@click.pass_obj
def init(obj: Ctx, rotate_admin_key: bool, as_json: bool) -> None:
    """Create the database, run migrations, and create the admin key (printed once, stored hashed)."""

    settings = obj.settings()
    revision = db.upgrade(obj.engine())
    key = None
    with db.transaction(obj.sessions()) as s:
        active = list(s.scalars(sa.select(AdminKey).where(AdminKey.revoked_at.is_(None))))
        if rotate_admin_key:
            for k in active:
                k.revoked_at = utcnow()
        if rotate_admin_key or not active:
            row_id = new_id("adm")
            key, key_hash = security.new_secret("ak", row_id)
            s.add(AdminKey(id=row_id, key_hash=key_hash, created_at=utcnow()))
    data = {"database": _redact(settings.resolved_database_url()), "revision": revision, "admin_key": key}
    emit(
        as_json,
        data,
        lambda d: (
            f"database {d['database']} at revision {d['revision']}\n"
            + (
                f"admin key (shown once, store it now): {d['admin_key']}"
                if d["admin_key"]
                else "admin key: unchanged (use --rotate-admin-key for a new one)"
            )
        ),
    )


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


@main.command()
@click.option("--host", default=None, help="Bind address (default from settings: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from settings: 8700).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="API worker processes (uvicorn); each builds its own app and database pool from the settings.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="Log every request (uvicorn's access log; a reverse proxy usually logs them already).",
)
@click.pass_obj
def serve(obj: Ctx, host: str | None, port: int | None, workers: int, access_log: bool) -> None:
    """Serve the HTTP API with uvicorn (refuses an unmigrated database: exit 3).

    With ``--workers N`` uvicorn supervises N processes sharing the port; the settings reach them as
    ``ARTE_SERVER_*`` environment variables (the options given here override the environment)."""

    settings = obj.settings()
    engine = obj.engine()
    try:
        db.check_current(engine)
    except NotReady as e:
        fail(False, Exit.NOT_READY, e.type, e.message)
    finally:
        engine.dispose()
    # the worker processes read their settings from the environment: hand the options on that way
    for name, value in obj.overrides.items():
        os.environ[f"ARTE_SERVER_{name.upper()}"] = str(value)
    uvicorn.run(
        "server.app:app_from_env",
        factory=True,
        workers=workers,
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level="info",
        proxy_headers=False,
        access_log=access_log,
    )


@main.command()
@click.option("--once", is_flag=True, help="Run at most one job, then exit.")
@json_option
@click.pass_obj
def worker(obj: Ctx, once: bool, as_json: bool) -> None:
    """Run queued jobs (aggregate, elicit, align, tailor) and drive the campaigns until interrupted."""

    try:
        w = Worker(obj.settings(), obj.sessions())
    except NotReady as e:
        fail(as_json, Exit.NOT_READY, e.type, e.message)
    if once:
        job_id = w.run_once()
        emit(
            as_json,
            {"job_id": job_id},
            lambda d: f"ran job {d['job_id']}" if d["job_id"] else "no queued job",
        )
        return
    stop = threading.Event()
    try:
        w.run_forever(stop)
    except KeyboardInterrupt:
        stop.set()


for _group in (tasks, cohorts, tokens, rounds, aggregates, jobs, devices, campaigns, adapters, service):
    main.add_command(_group)

if __name__ == "__main__":
    main()
