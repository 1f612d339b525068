"""Drafts: the teacher's (question, rationale, answer) triples that students score.

A drafts file is JSONL, one draft per line: ``{"id", "question", "rationale", "answer"}`` plus optional
``question_id`` (drafts of the same question share it), ``style`` (the rationale prompt id), ``task`` and
``provenance`` (teacher, adapter, prompt id, sampling, seed). A malformed line raises
:class:`DraftFormatError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from arte.errors import DraftFormatError
from arte.jsonl import read_records

__all__ = ["Draft", "read_drafts", "write_drafts", "draft_from_dict"]


@dataclass(frozen=True)
class Draft:
    """One teacher draft. ``rationale`` normally ends with ``<ans>answer</ans>``."""

    id: str
    question: str
    rationale: str
    answer: str
    question_id: str = ""
    style: str = ""
    task: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["provenance"] = dict(self.provenance)
        return d


_REQUIRED = ("id", "question", "rationale", "answer")
_OPTIONAL = ("question_id", "style", "task")


def draft_from_dict(d: Any, *, path: str = "<drafts>", line: int | None = None) -> Draft:
    """Validate one draft object; errors name ``path``, ``line`` and the field."""
    if not isinstance(d, dict):
        raise DraftFormatError(path, f"expected an object, got {type(d).__name__}", line)
    for key in _REQUIRED:
        v = d.get(key)
        if v is None:
            raise DraftFormatError(path, "missing", line, key)
        if not isinstance(v, str):
            raise DraftFormatError(path, f"expected a string, got {type(v).__name__}", line, key)
        if key != "rationale" and not v.strip():
            raise DraftFormatError(path, "is empty", line, key)
    for key in _OPTIONAL:
        if key in d and not isinstance(d[key], str):
            raise DraftFormatError(path, f"expected a string, got {type(d[key]).__name__}", line, key)
    prov = d.get("provenance", {})
    if not isinstance(prov, dict):
        raise DraftFormatError(path, "expected an object", line, "provenance")
    return Draft(id=d["id"], question=d["question"], rationale=d["rationale"], answer=d["answer"],
                 question_id=d.get("question_id") or d["id"], style=d.get("style", ""), task=d.get("task", ""),
                 provenance=prov)


def read_drafts(path: str | Path) -> list[Draft]:
    """Read and validate a drafts JSONL file; ids must be unique."""
    drafts = read_records(path, draft_from_dict, DraftFormatError)
    if not drafts:
        raise DraftFormatError(str(path), "no drafts (the file is empty)")
    return drafts


def write_drafts(path: str | Path, drafts: Iterable[Draft]) -> int:
    """Write drafts as JSONL; returns the number written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for d in drafts:
            f.write(json.dumps(d.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n
