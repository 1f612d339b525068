"""What every ``arte`` command shares: exit codes, output, progress bars, threads.

Every data command takes ``--json`` and then prints exactly one JSON document on stdout (:func:`emit`);
progress bars (:class:`Bars`) and logs go to stderr (:func:`session`). Errors become exit codes once, in
:func:`fail`, by the table :data:`_CODES` (:class:`Exit`, shown by ``arte --help``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator, NoReturn

import click
from tqdm import tqdm

from arte.errors import ArteError, ConfigError, DraftFormatError, ModelError, TaskFormatError
from arte.exit_codes import ExitCodes, code_for, render

__all__ = ["Bars", "Exit", "emit", "fail", "session", "set_threads"]


class Exit(ExitCodes):
    """``arte``'s exit codes (shown by ``--help``)."""

    OK = 0, "success"
    ERROR = 1, "unexpected error (a bug: please report it)"
    USAGE = 2, "bad command-line usage"
    INPUT = 3, "a task, drafts or pairs file is malformed, or a config value is invalid"
    MODEL = 4, "the model is missing, corrupt or unusable"
    RUNTIME = 5, "the model runtime or the teacher endpoint failed"


_CODES: dict[type[BaseException], Exit] = {TaskFormatError: Exit.INPUT, DraftFormatError: Exit.INPUT,
                                           ConfigError: Exit.INPUT, ModelError: Exit.MODEL, ArteError: Exit.RUNTIME}


def fail(err: ArteError) -> NoReturn:
    """Print an ARTE error and exit with its code."""
    click.echo(f"error: {err}", err=True)
    sys.exit(int(code_for(err, _CODES, Exit.ERROR)))


def emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(render(data, as_json, human))


class Bars:
    """One tqdm bar per progress stage, on stderr."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, dynamic_ncols=True)
        if bar.disable:
            return
        bar.total = total
        bar.n = done
        bar.refresh()
        if total and done >= total:   # finished: freeze its elapsed time
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@contextlib.contextmanager
def session(verbose: bool) -> Iterator[Bars]:
    """Logs to stderr, stdout kept clean for the JSON document, bars closed at the end."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    bars = Bars()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield bars
    finally:
        bars.close()


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (torch loads only when a count is given)."""
    if threads:
        import torch  # heavy: torch loads only when threads are set

        torch.set_num_threads(threads)
