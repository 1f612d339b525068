"""Exit codes of ``edge-agent``, one registry with help text (shown by ``edge-agent --help``)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1          # unexpected error (a bug: please report it)
    USAGE = 2          # bad command-line usage
    INPUT = 3          # a task, drafts or data file is malformed, or a config value is invalid
    MODEL = 4          # the model or an adapter is missing, corrupt or unusable
    RUNTIME = 5        # the model runtime failed (context too small, out of memory)

    @classmethod
    def help_text(cls) -> str:
        return "\n".join(f"  {c.value}  {c.name.lower()}" for c in cls)
