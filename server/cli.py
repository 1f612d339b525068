"""``arte-server``: set up, serve, work, and administer the fleet from the shell.

Commands: ``init`` (create the database, run migrations, create the admin key and print it once),
``serve`` (uvicorn), ``worker`` (run jobs), and ``tasks``/``cohorts``/``tokens``/``rounds``/``jobs``/
``devices`` admin groups (list/show/create and a few actions) that work on the database directly. Every
command takes ``--json`` and then prints exactly one JSON document on stdout; logs go to stderr.

Exit codes:
    0  success
    1  the request was refused (not found, conflict, bad value); the message names the field
    2  usage error (click)
    3  the database is not migrated to the current revision (run ``arte-server init``)
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["main", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "EXIT_NOT_READY"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_READY = 0, 1, 2, 3


class _Ctx:
    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self._engine: Any = None

    def settings(self) -> Any:
        from server.settings import ServerSettings

        return ServerSettings(**self.overrides)

    def engine(self) -> Any:
        if self._engine is None:
            from server import db

            s = self.settings()
            self._engine = db.make_engine(s.resolved_database_url(), schema=s.db_schema)
        return self._engine

    def sessions(self, check: bool = True) -> Any:
        from server import db

        if check:
            db.check_current(self.engine())
        return db.make_sessionmaker(self.engine())


def _emit(as_json: bool, data: Any, human: Callable[[Any], str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, default=str, indent=None))
    else:
        click.echo(human(data) if human else json.dumps(data, default=str, indent=2))


def _fail(as_json: bool, code: int, type_: str, message: str, detail: dict[str, Any] | None = None) -> None:
    from server.errors import to_body

    if as_json:
        click.echo(json.dumps(to_body(type_, message, detail or {}), default=str))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _run(obj: _Ctx, as_json: bool, fn: Callable[[Any, Any], Any], human: Callable[[Any], str] | None = None) -> None:
    """Run ``fn(session, now)`` in one transaction; convert server errors to exit codes once."""
    from pydantic import ValidationError

    from server.app import field_path
    from server.db import transaction
    from server.errors import NotReady, ServerError
    from server.models import utcnow

    try:
        with transaction(obj.sessions()) as s:
            data = fn(s, utcnow())
            data = _jsonable(data)
    except NotReady as e:
        _fail(as_json, EXIT_NOT_READY, e.type, e.message, e.detail)
    except ServerError as e:
        _fail(as_json, EXIT_REFUSED, e.type, e.message, e.detail)
    except ValidationError as e:
        err = e.errors()[0]
        field = field_path(err["loc"])
        _fail(as_json, EXIT_REFUSED, "validation_error", f"{field}: {err['msg']}", {"field": field})
    _emit(as_json, data, human)


def _jsonable(data: Any) -> Any:
    from pydantic import BaseModel

    from arte.wire import to_wire

    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [_jsonable(x) for x in data]
    return to_wire(data)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


@click.group()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="State directory (env ARTE_SERVER_DATA_DIR; default ~/.cache/arte-edge/server).")
@click.option("--database-url", default=None,
              help="SQLAlchemy URL (env ARTE_SERVER_DATABASE_URL; default SQLite under the data dir).")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level for stderr.")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, database_url: str | None, log_level: str) -> None:
    """ARTE Edge fleet server."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    ctx.obj = _Ctx({"data_dir": data_dir, "database_url": database_url})


@main.command()
@click.option("--rotate-admin-key", is_flag=True, help="Revoke existing admin keys and print a new one.")
@json_option
@click.pass_obj
def init(obj: _Ctx, rotate_admin_key: bool, as_json: bool) -> None:
    """Create the database, run migrations, and create the admin key (printed once, stored hashed)."""
    import sqlalchemy as sa

    from server import db, security
    from server.models import AdminKey, new_id, utcnow

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
    _emit(as_json, data, lambda d: (f"database {d['database']} at revision {d['revision']}\n" + (
        f"admin key (shown once, store it now): {d['admin_key']}" if d["admin_key"]
        else "admin key: unchanged (use --rotate-admin-key for a new one)")))


def _redact(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


@main.command()
@click.option("--host", default=None, help="Bind address (default from settings: 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from settings: 8700).")
@click.option("--workers", type=int, default=1, show_default=True, help="uvicorn worker processes.")
@click.pass_obj
def serve(obj: _Ctx, host: str | None, port: int | None, workers: int) -> None:
    """Serve the HTTP API with uvicorn (refuses an unmigrated database: exit 3)."""
    import uvicorn

    from server.app import create_app
    from server.errors import NotReady

    settings = obj.settings()
    try:
        app = create_app(settings, engine=obj.engine())
    except NotReady as e:
        _fail(False, EXIT_NOT_READY, e.type, e.message)
    if workers > 1:
        click.echo("note: --workers > 1 needs an import string; running one process per call instead", err=True)
    uvicorn.run(app, host=host or settings.host, port=port if port is not None else settings.port,
                log_level="info", proxy_headers=False)


@main.command()
@click.option("--once", is_flag=True, help="Run at most one job, then exit.")
@json_option
@click.pass_obj
def worker(obj: _Ctx, once: bool, as_json: bool) -> None:
    """Run queued jobs (aggregate, elicit, align, tailor) until interrupted."""
    from server.errors import NotReady
    from server.worker import Worker

    try:
        w = Worker(obj.settings(), obj.sessions())
    except NotReady as e:
        _fail(as_json, EXIT_NOT_READY, e.type, e.message)
    if once:
        job_id = w.run_once()
        _emit(as_json, {"job_id": job_id}, lambda d: f"ran job {d['job_id']}" if d["job_id"] else "no queued job")
        return
    stop = threading.Event()
    try:
        w.run_forever(stop)
    except KeyboardInterrupt:
        stop.set()


def _load_json_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


from server import cli_admin  # noqa: E402,F401  (registers the admin groups on `main`)

