"""Reading a JSONL file of records with ids: the one reader behind drafts and pairs files.

Contract: :func:`read_records` parses each non-blank line as JSON and hands the object to
``parse(obj, path, line)``; a line that is not JSON, a record ``parse`` refuses, or an id seen before
raises ``error(path, problem, line, field)`` naming the file, the line and the field. A missing file is
an error too. Returns the records in file order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = ["read_records"]

T = TypeVar("T")


def read_records(path: str | Path, parse: Callable[..., T], error: Callable[..., Exception]) -> list[T]:
    p = Path(path)
    if not p.is_file():
        raise error(str(p), "no such file")
    records: list[T] = []
    seen: dict[str, int] = {}
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj: Any = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(str(p), f"invalid JSON: {e.msg} (column {e.colno})", lineno) from None
            record = parse(obj, path=str(p), line=lineno)
            rid = getattr(record, "id")
            if rid in seen:
                raise error(str(p), f"duplicate id {rid!r} (first on line {seen[rid]})", lineno, "id")
            seen[rid] = lineno
            records.append(record)
    return records
