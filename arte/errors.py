"""Errors raised by the ARTE library.

Every error carries the context a user needs to fix the problem: the file, the example index, the
field, the model path. Shells (CLIs, the server) convert them once, at their boundary.

    ArteError
    ├── ConfigError        a config value is invalid (names the field)
    ├── TaskFormatError    a task file is malformed (names the file, example index and field)
    ├── DraftFormatError   a drafts file is malformed (names the file, line and field)
    ├── PairFormatError    a preference-pairs file is malformed (names the file, line and field)
    ├── ModelError         a model is missing, corrupt or cannot be loaded (says what to run)
    ├── BackendError       a student/teacher backend failed at run time (context window, runtime)
    │   └── TeacherHTTPError   an OpenAI-compatible endpoint failed (names the URL and HTTP status)
    ├── ScoringError       scoring cannot run on this input (e.g. loglik on exact-match items)
    ├── PrivacyBudgetExceeded  a report would spend more of a device's privacy budget than it has
    └── ReportContentError     a report would carry something other than per-draft scores
"""

from __future__ import annotations

__all__ = [
    "ArteError",
    "BackendError",
    "ConfigError",
    "DraftFormatError",
    "ModelError",
    "PairFormatError",
    "PrivacyBudgetExceeded",
    "ReportContentError",
    "ScoringError",
    "TaskFormatError",
    "TeacherHTTPError",
]


class ArteError(Exception):
    """Base of every error the library raises on purpose."""


class ConfigError(ArteError, ValueError):
    """An invalid configuration value; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class _FileError(ArteError, ValueError):
    """A problem in a file at a location (example index or line)."""

    location_name = "example"

    def __init__(self, path: str, problem: str, index: int | None = None, field: str | None = None) -> None:
        self.path = str(path)
        self.index = index
        self.field = field
        self.problem = problem
        where = self.path
        if index is not None:
            where += f": {self.location_name} {index}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {problem}")


class TaskFormatError(_FileError):
    """A task file (BIG-bench task.json or JSONL) is malformed."""


class DraftFormatError(_FileError):
    """A drafts JSONL file is malformed."""

    location_name = "line"


class PairFormatError(_FileError):
    """A preference-pairs JSONL file is malformed."""

    location_name = "line"


class ModelError(ArteError):
    """A model file or directory is missing, corrupt or unusable; the message says what to run."""


class BackendError(ArteError, RuntimeError):
    """A model runtime failed while working (for example a prompt longer than the context)."""


class ScoringError(ArteError, ValueError):
    """Scoring was asked for something the items or the student cannot give."""


class PrivacyBudgetExceeded(ArteError):
    """Reporting ``round_id`` under the requested (epsilon, delta) would exceed the device's total budget.

    Carries what was asked, what is spent and the budget, so the agent can log and skip the round.
    """

    def __init__(self, round_id: str, requested: tuple[float, float], spent: tuple[float, float],
                 budget: tuple[float, float]) -> None:
        self.round_id = round_id
        self.requested = requested
        self.spent = spent
        self.budget = budget
        super().__init__(
            f"round {round_id!r}: reporting with epsilon={requested[0]:g}, delta={requested[1]:g} would exceed "
            f"the privacy budget (epsilon={budget[0]:g}, delta={budget[1]:g}; spent epsilon={spent[0]:g}, "
            f"delta={spent[1]:g}); the device must not report this round")


class ReportContentError(ArteError, ValueError):
    """A report about to leave the device holds something other than scores; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class TeacherHTTPError(BackendError):
    """An OpenAI-compatible teacher endpoint failed: ``url`` and ``status`` (None when no HTTP response
    came back: connection refused, timeout) say where and how; ``attempts`` how often it was tried."""

    def __init__(self, url: str, problem: str, *, status: int | None = None, attempts: int = 1) -> None:
        self.url = url
        self.status = status
        self.attempts = attempts
        where = f"{url}: HTTP {status}" if status is not None else url
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{where}: {problem}{tries}")
