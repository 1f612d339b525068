"""Exit codes and output of the project's command lines: one shape, a registry per CLI.

Contract: each CLI (``arte``, ``edge-agent``, ``arte-server``) defines its codes as a subclass of
:class:`ExitCodes` whose members are ``NAME = (value, meaning)``, and a table from exception types to
members. Codes 0, 1 and 2 mean the same in every CLI (:data:`COMMON`: success, an unexpected error, bad
usage); each CLI numbers its own from 3. :meth:`ExitCodes.help_text` is the table its ``--help`` shows;
:func:`code_for` maps an exception to its code by the most specific type in the table (ERROR for anything
unknown); :func:`render` is what a command prints: one JSON document with ``--json``, else the human text.
Nothing here prints or exits: the CLIs do, with click.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any, Mapping, TypeVar

__all__ = ["COMMON", "ExitCodes", "code_for", "render"]

E = TypeVar("E", bound="ExitCodes")

COMMON = {0: ("OK", "success"), 1: ("ERROR", "unexpected error (a bug: please report it)"),
          2: ("USAGE", "bad command-line usage")}


class ExitCodes(IntEnum):
    """Base of a CLI's exit codes: members are ``NAME = (value, meaning)``."""

    meaning: str

    def __new__(cls, value: int, meaning: str) -> "ExitCodes":
        obj = int.__new__(cls, value)
        obj._value_ = value
        obj.meaning = meaning
        return obj

    @classmethod
    def help_text(cls) -> str:
        return "\n".join(f"  {c.value:>2}  {c.name.lower()}: {c.meaning}" for c in cls)

    @classmethod
    def check(cls) -> None:
        """Raise if the codes break the common meaning of 0, 1 and 2 (a unit test calls it per CLI)."""
        for value, (name, _) in COMMON.items():
            if cls(value).name != name:
                raise ValueError(f"{cls.__name__}: exit code {value} must be {name}, is {cls(value).name}")


def code_for(err: BaseException, table: Mapping[type[BaseException], E], default: E) -> E:
    """The code of the most specific exception type of ``err`` in ``table``; ``default`` if none."""
    for cls in type(err).__mro__:
        if cls in table:
            return table[cls]
    return default


def render(data: Any, as_json: bool, human: str) -> str:
    """A command's output: one JSON document with ``--json``, else the human text."""
    return json.dumps(data, indent=2, default=str) if as_json else human
