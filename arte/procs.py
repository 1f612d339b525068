"""Child processes: start them so that their end can be told, and tell it.

Contract, for every shell that starts a process (the demo's server, worker and agents, the server's align
launcher, the llama.cpp self-check):

* :func:`child_env` is the environment to start a Python child with: faulthandler on (a fatal signal
  prints the Python stack to stderr before the process dies), unbuffered output (the log holds
  everything the child wrote up to its death, not a buffer that died with it) and passive OpenMP.
* :func:`passive_openmp` makes OpenMP threads sleep rather than spin while they wait (an explicit
  ``OMP_WAIT_POLICY`` wins). Our processes share their device: with OpenMP's default active spin-wait,
  two training threads on a busy 2-core machine ran 5-9x slower (measured; ``benchmarks/sft.py``).
  OpenMP reads it once, when torch or llama.cpp loads it: set it before.
* :func:`describe_exit` says how a process ended from its return code: ``exited with status 3``,
  ``killed by signal SIGILL (illegal instruction: ...)``; a shell's ``128 + N`` is read as signal N too.
* :func:`death_message` names the process, how it ended, and the last lines of its log.
* :func:`run_child` runs a command to its end or its timeout (then kills its whole process group) and
  returns what it printed.

Nothing here raises on an unreadable log: a message without a tail is still a message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping, Sequence

__all__ = ["ChildResult", "child_env", "death_message", "describe_exit", "log_tail", "passive_openmp", "run_child",
           "signal_name"]

# What a signal usually means for our children, so the reader knows where to look.
_HINTS = {
    "SIGILL": "the CPU met an instruction it cannot execute: native code built for another CPU",
    "SIGSEGV": "a crash in native code",
    "SIGBUS": "a crash in native code (or a truncated memory-mapped file)",
    "SIGABRT": "native code aborted (an assertion or an allocation failed)",
    "SIGKILL": "killed from outside, often by the kernel's out-of-memory killer (see dmesg)",
    "SIGFPE": "an arithmetic fault in native code",
}


def passive_openmp(env: MutableMapping[str, str] | None = None) -> None:
    """OpenMP threads in ``env`` (default: this process's environment) wait passively, unless set otherwise."""
    (os.environ if env is None else env).setdefault("OMP_WAIT_POLICY", "PASSIVE")


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with faulthandler on, unbuffered output, passive OpenMP."""
    out = dict(os.environ if env is None else env)
    out["PYTHONFAULTHANDLER"] = "1"
    out["PYTHONUNBUFFERED"] = "1"
    passive_openmp(out)
    return out


def signal_name(signum: int) -> str:
    """``SIGILL`` for 4 (on Linux); ``signal 99`` for a number with no name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _signal_text(signum: int) -> str:
    name = signal_name(signum)
    what = (signal.strsignal(signum) or "").strip()
    what = what[:1].lower() + what[1:]
    hint = _HINTS.get(name)
    inner = "; ".join(x for x in (what, hint) if x)
    return f"signal {name}" + (f" ({inner})" if inner else "")


def describe_exit(returncode: int | None) -> str:
    """How a process ended, from its return code (``Popen.returncode``; None: still running)."""
    if returncode is None:
        return "is still running"
    if returncode == 0:
        return "exited normally (status 0)"
    if returncode < 0:
        return f"was killed by {_signal_text(-returncode)}"
    if 128 < returncode < 128 + 65 and signal_name(returncode - 128) != f"signal {returncode - 128}":
        return (f"exited with status {returncode} (a shell's way of saying its child was killed by "
                f"{_signal_text(returncode - 128)})")
    return f"exited with status {returncode}"


def log_tail(source: str | Path | bytes | None, lines: int = 20, max_chars: int = 4000) -> str:
    """The last ``lines`` lines (at most ``max_chars`` characters) of a log file or of captured output."""
    if source is None:
        return ""
    if isinstance(source, bytes):
        text = source.decode("utf-8", errors="replace")
    elif isinstance(source, Path):
        try:
            with open(source, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4 * max_chars))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
    else:
        text = source
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return tail[-max_chars:]


def death_message(what: str, returncode: int | None, log: str | Path | bytes | None = None, *,
                  lines: int = 20) -> str:
    """``"<what> was killed by signal SIGILL (...)"`` plus the last lines of its log (a path or text)."""
    msg = f"{what} {describe_exit(returncode)}"
    tail = log_tail(log, lines)
    where = f" ({log})" if isinstance(log, Path) else ""
    if tail:
        msg += f"; last lines of its log{where}:\n{tail}"
    elif log is not None:
        msg += f"; its log{where} is empty or unreadable"
    return msg


@dataclass(frozen=True)
class ChildResult:
    """A finished (or timed-out and killed) child: ``returncode`` is None when it timed out."""

    command: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self, what: str, timeout_s: float | None = None) -> str:
        """How it ended, in one sentence, plus the last lines of its stderr."""
        if self.timed_out:
            head = f"{what} did not finish within {timeout_s or self.seconds:g} s and was killed"
            tail = log_tail(self.stderr)
            return head + (f"; last lines of its output:\n{tail}" if tail else "")
        return death_message(what, self.returncode, self.stderr)


def run_child(command: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> ChildResult:
    """Run ``command`` in its own session, capturing stdout and stderr; past ``timeout_s`` its whole
    process group is killed (so a hung native thread cannot outlive it)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_env(env), cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        out, err = proc.communicate()
        timed_out = True
    return ChildResult(tuple(command), None if timed_out else proc.returncode,
                       out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace"),
                       round(time.monotonic() - t0, 3), timed_out)
