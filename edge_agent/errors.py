"""Errors of the edge agent and its exit codes: one registry with help text (shown by ``edge-agent --help``).

The agent's own errors carry their context (path, URL, status, dataset id) and are converted to an exit
code once, in the CLI (:func:`exit_code_for`)::

    AgentError
    ├── NotEnrolledError   no enrollment in the state dir (run `edge-agent enroll`)
    ├── StateError         the state dir is unusable: read-only, full, corrupt or from a newer agent
    ├── NetworkError       the server could not be reached after every retry (nothing is lost: queued)
    ├── ServerError        the server answered with an error body (status, type, message, detail)
    │   └── AuthError      401/403: the enrollment token or device key was refused
    ├── IntegrityError     a download failed its sha256 or signature check (the file was deleted)
    ├── BudgetError        the local privacy budget does not allow this round
    └── TrainingError      the train step is unavailable or failed

Errors of the library (:mod:`arte.errors`) and of profiles (:class:`firmware_profiles.ProfileError`) map
to codes here too.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from arte.errors import (ArteError, BackendError, ConfigError, DraftFormatError, ModelError, ScoringError,
                         TaskFormatError)

__all__ = ["ExitCode", "AgentError", "NotEnrolledError", "StateError", "NetworkError", "ServerError",
           "AuthError", "IntegrityError", "BudgetError", "TrainingError", "exit_code_for"]


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    INPUT = 3
    MODEL = 4
    RUNTIME = 5
    NETWORK = 6
    AUTH = 7
    SERVER = 8
    STATE = 9
    INTEGRITY = 10
    BUDGET = 11
    NOT_ENROLLED = 12
    TRAINING = 13
    CHECKS = 14

    @classmethod
    def help_text(cls) -> str:
        return "\n".join(f"  {c.value:>2}  {c.name.lower()}: {_HELP[c.name]}" for c in cls)


_HELP = {
    "OK": "success",
    "ERROR": "unexpected error (a bug: please report it)",
    "USAGE": "bad command-line usage",
    "INPUT": "a task, drafts, data or profile file is malformed, or a config value is invalid",
    "MODEL": "the model or an adapter is missing, corrupt or unusable",
    "RUNTIME": "the model runtime failed (context too small, out of memory)",
    "NETWORK": "server unreachable after retries (reports stay queued, nothing is lost)",
    "AUTH": "the server refused the enrollment token or the device key",
    "SERVER": "the server answered with an error or an unexpected body",
    "STATE": "the local state dir is read-only, full, corrupt or from a newer agent",
    "INTEGRITY": "a download failed its sha256/signature check (deleted, never used)",
    "BUDGET": "the local privacy budget is spent (the round was not reported)",
    "NOT_ENROLLED": "this device is not enrolled: run `edge-agent enroll`",
    "TRAINING": "the train step is unavailable or failed",
    "CHECKS": "`doctor` found problems that stop the agent from working",
}


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    exit_code = ExitCode.ERROR


class NotEnrolledError(AgentError):
    exit_code = ExitCode.NOT_ENROLLED


class StateError(AgentError):
    """The state dir at ``path`` cannot be used; the message says why and what to do."""

    exit_code = ExitCode.STATE

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state {path}: {problem}")


class NetworkError(AgentError):
    """No usable answer from ``url`` after ``attempts`` tries."""

    exit_code = ExitCode.NETWORK

    def __init__(self, url: str, problem: str, attempts: int) -> None:
        self.url = url
        self.attempts = attempts
        super().__init__(f"{url}: {problem} (after {attempts} attempt{'s' * (attempts != 1)})")


class ServerError(AgentError):
    """The server's error body: ``status``, ``type``, ``message``, ``detail`` (``detail['field']``)."""

    exit_code = ExitCode.SERVER

    def __init__(self, url: str, status: int, type_: str, message: str,
                 detail: dict[str, Any] | None = None) -> None:
        self.url = url
        self.status = status
        self.type = type_
        self.message = message
        self.detail = detail or {}
        field = f" (field {self.detail['field']})" if "field" in self.detail else ""
        super().__init__(f"{url}: HTTP {status} {type_}: {message}{field}")


class AuthError(ServerError):
    exit_code = ExitCode.AUTH


class IntegrityError(AgentError):
    exit_code = ExitCode.INTEGRITY


class BudgetError(AgentError):
    exit_code = ExitCode.BUDGET


class TrainingError(AgentError):
    exit_code = ExitCode.TRAINING


def exit_code_for(err: BaseException) -> ExitCode:
    """The exit code for an error raised on purpose (agent, library or profile); ERROR for anything else."""
    from firmware_profiles import ProfileError

    if isinstance(err, AgentError):
        return err.exit_code
    if isinstance(err, (TaskFormatError, DraftFormatError, ConfigError, ProfileError, ScoringError)):
        return ExitCode.INPUT
    if isinstance(err, ModelError):
        return ExitCode.MODEL
    if isinstance(err, (BackendError, ArteError)):
        return ExitCode.RUNTIME
    return ExitCode.ERROR
