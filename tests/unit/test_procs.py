"""arte.procs: children that die are described by how they died, with their log's last lines."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from arte.procs import child_env, death_message, describe_exit, log_tail, run_child

# Writes a line without flushing, then dies of SIGILL: only unbuffered output keeps the line.
DIE = ("import os, signal\n"
       "print('loaded the model, evaluating 64 tokens')\n"
       "os.kill(os.getpid(), signal.SIGILL)\n")


def test_describe_exit_names_signals_and_statuses() -> None:
    assert describe_exit(0) == "exited normally (status 0)"
    assert describe_exit(3) == "exited with status 3"
    ill = describe_exit(-signal.SIGILL)
    assert ill.startswith("was killed by signal SIGILL (illegal instruction") and "another CPU" in ill
    assert "SIGSEGV" in describe_exit(-signal.SIGSEGV)
    assert "out-of-memory" in describe_exit(-signal.SIGKILL)
    assert "SIGILL" in describe_exit(128 + signal.SIGILL)   # what a shell reports for its child
    assert describe_exit(None) == "is still running"


def test_a_child_that_kills_itself_is_reported_with_the_signal_and_its_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with open(log, "ab") as f:
        p = subprocess.run([sys.executable, "-c", DIE], stdout=f, stderr=subprocess.STDOUT, env=child_env(),
                           check=False)
    msg = death_message("the job worker", p.returncode, log)
    assert msg.startswith("the job worker was killed by signal SIGILL (illegal instruction")
    assert "loaded the model, evaluating 64 tokens" in msg          # unbuffered: the line reached the log
    assert "Fatal Python error: Illegal instruction" in msg          # faulthandler wrote the stack
    assert str(log) in msg


def test_without_child_env_the_unflushed_line_is_lost(tmp_path: Path) -> None:
    """Why child_env matters: the same child, buffered and without faulthandler, leaves an empty log."""
    log = tmp_path / "worker.log"
    env = {k: v for k, v in child_env().items() if k not in ("PYTHONUNBUFFERED", "PYTHONFAULTHANDLER")}
    with open(log, "ab") as f:
        p = subprocess.run([sys.executable, "-c", DIE], stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    assert p.returncode == -signal.SIGILL
    assert "its log" in death_message("the worker", p.returncode, log) and log_tail(log) == ""


def test_run_child_kills_a_hung_process_group(tmp_path: Path) -> None:
    # the child starts a grandchild that holds the pipes open: only killing the group ends both
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('started', flush=True); time.sleep(60)\n")
    r = run_child([sys.executable, "-c", code], timeout_s=2)
    assert r.timed_out and r.returncode is None and r.seconds < 30
    assert "started" in r.stdout
    assert "did not finish within 2 s and was killed" in r.describe("the check", 2)


def test_run_child_reports_a_non_zero_exit_with_stderr() -> None:
    r = run_child([sys.executable, "-c", "import sys; sys.stderr.write('no model here\\n'); sys.exit(4)"],
                  timeout_s=30)
    assert not r.ok and r.returncode == 4
    assert r.describe("the check") == "the check exited with status 4; last lines of its log:\nno model here"


def test_log_tail_keeps_the_last_lines() -> None:
    text = "\n".join(f"line {i}" for i in range(100))
    assert log_tail(text, lines=2) == "line 98\nline 99"
    missing = Path("/nonexistent/log")
    assert log_tail(missing) == "" and death_message("x", 1, missing).endswith("is empty or unreadable")
