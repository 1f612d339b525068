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

from typing import Any

from arte.errors import (
    ArteError,
    BackendError,
    ConfigError,
    DraftFormatError,
    ModelError,
    ScoringError,
    TaskFormatError,
)
from arte.exit_codes import ExitCodes, code_for
from firmware_profiles import ProfileError

__all__ = ["ExitCode", "AgentError", "NotEnrolledError", "StateError", "NetworkError", "ServerError",
           "AuthError", "IntegrityError", "BudgetError", "TrainingError", "exit_code_for"]


class ExitCode(ExitCodes):
    """``edge-agent``'s exit codes (shown by ``--help``)."""

    OK = 0, "success"
    ERROR = 1, "unexpected error (a bug: please report it)"
    USAGE = 2, "bad command-line usage"
    INPUT = 3, "a task, drafts, data or profile file is malformed, or a config value is invalid"
    MODEL = 4, "the model or an adapter is missing, corrupt or unusable"
    RUNTIME = 5, "the model runtime failed (context too small, out of memory)"
    NETWORK = 6, "server unreachable after retries (reports stay queued, nothing is lost)"
    AUTH = 7, "the server refused the enrollment token or the device key"
    SERVER = 8, "the server answered with an error or an unexpected body"
    STATE = 9, "the local state dir is read-only, full, corrupt or from a newer agent"
    INTEGRITY = 10, "a download failed its sha256/signature check (deleted, never used)"
    BUDGET = 11, "the local privacy budget is spent (the round was not reported)"
    NOT_ENROLLED = 12, "this device is not enrolled: run `edge-agent enroll`"
    TRAINING = 13, "the train step is unavailable or failed"
    CHECKS = 14, "`doctor` found problems that stop the agent from working"


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class NotEnrolledError(AgentError):
    """No enrollment in the state dir."""


class StateError(AgentError):
    """The state dir at ``path`` cannot be used; the message says why and what to do."""


    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state {path}: {problem}")


class NetworkError(AgentError):
    """No usable answer from ``url`` after ``attempts`` tries."""


    def __init__(self, url: str, problem: str, attempts: int) -> None:
        self.url = url
        self.attempts = attempts
        super().__init__(f"{url}: {problem} (after {attempts} attempt{'s' * (attempts != 1)})")


class ServerError(AgentError):
    """The server's error body: ``status``, ``type``, ``message``, ``detail`` (``detail['field']``)."""


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
    """401/403: the enrollment token or device key was refused."""


class IntegrityError(AgentError):
    """A download failed its sha256 or signature check (the file was deleted)."""


class BudgetError(AgentError):
    """The local privacy budget does not allow this round."""


class TrainingError(AgentError):
    """The train step is unavailable or failed."""


# Errors raised on purpose (agent, library, profile) -> their code; the most specific type wins.
_CODES: dict[type[BaseException], ExitCode] = {
    AgentError: ExitCode.ERROR, NotEnrolledError: ExitCode.NOT_ENROLLED, StateError: ExitCode.STATE,
    NetworkError: ExitCode.NETWORK, ServerError: ExitCode.SERVER, AuthError: ExitCode.AUTH,
    IntegrityError: ExitCode.INTEGRITY, BudgetError: ExitCode.BUDGET, TrainingError: ExitCode.TRAINING,
    TaskFormatError: ExitCode.INPUT, DraftFormatError: ExitCode.INPUT, ConfigError: ExitCode.INPUT,
    ProfileError: ExitCode.INPUT, ScoringError: ExitCode.INPUT, ModelError: ExitCode.MODEL,
    BackendError: ExitCode.RUNTIME, ArteError: ExitCode.RUNTIME,
}


def exit_code_for(err: BaseException) -> ExitCode:
    """The exit code for an error raised on purpose (agent, library or profile); ERROR for anything else."""
    return code_for(err, _CODES, ExitCode.ERROR)
