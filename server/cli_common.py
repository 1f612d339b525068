"""Helpers shared by the ``arte-server`` commands: settings from options, one transaction per command,
output (one JSON document with ``--json``), and errors converted to exit codes once."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from arte.exit_codes import ExitCodes, render
from arte.wire import to_wire
from server import db
from server.app import field_path
from server.db import transaction
from server.errors import ApiError, NotReady, to_body
from server.settings import ServerSettings
from server.tables import utcnow


class Exit(ExitCodes):
    """``arte-server``'s exit codes (shown by ``--help``)."""

    OK = 0, "success"
    ERROR = 1, "unexpected error (a bug: please report it)"
    USAGE = 2, "bad command-line usage"
    NOT_READY = 3, "the database is not migrated to the current revision (run `arte-server init`)"
    REFUSED = 4, "the request was refused (not found, conflict, bad value); the message names the field"


class Ctx:
    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self._engine: Any = None

    def settings(self) -> Any:
        return ServerSettings(**self.overrides)

    def engine(self) -> Any:
        if self._engine is None:

            s = self.settings()
            self._engine = db.make_engine(s.resolved_database_url(), schema=s.db_schema)
        return self._engine

    def sessions(self, check: bool = True) -> Any:
        if check:
            db.check_current(self.engine())
        return db.make_sessionmaker(self.engine())


def emit(as_json: bool, data: Any, human: Callable[[Any], str] | None = None) -> None:
    if as_json or human is None:
        click.echo(render(data, True, ""))
    else:
        click.echo(human(data))


def fail(as_json: bool, code: int, type_: str, message: str, detail: dict[str, Any] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(to_body(type_, message, detail or {}), default=str))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_command(
    obj: Ctx, as_json: bool, fn: Callable[[Any, Any], Any], human: Callable[[Any], str] | None = None
) -> None:
    """Run ``fn(session, now)`` in one transaction; convert server errors to exit codes once."""

    try:
        with transaction(obj.sessions()) as s:
            data = fn(s, utcnow())
            data = jsonable(data)
    except NotReady as e:
        fail(as_json, Exit.NOT_READY, e.type, e.message, e.detail)
    except ApiError as e:
        fail(as_json, Exit.REFUSED, e.type, e.message, e.detail)
    except ValidationError as e:
        err = e.errors()[0]
        field = field_path(err["loc"])
        fail(as_json, Exit.REFUSED, "validation_error", f"{field}: {err['msg']}", {"field": field})
    emit(as_json, data, human)


def jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [jsonable(x) for x in data]
    return to_wire(data)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False))]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=False)) for r in rows]
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def load_json_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)
