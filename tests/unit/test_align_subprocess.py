"""The server's align launcher says how its child died: the signal's name and the log's last lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from server import job_handlers
from server.errors import JobError


class _Ctx:
    """The parts of a JobContext the launcher uses."""

    def __init__(self, tmp: Path) -> None:
        self.settings = SimpleNamespace(teacher_model="default", accelerate_args=[], job_heartbeat_s=30.0)
        self.children: list = []
        self.logged: list[str] = []
        self._dir = tmp

    def log(self, message: str, level: str = "info") -> None:
        self.logged.append(message)

    def progress(self, fraction: float | None = None) -> None:
        pass

    def work_dir(self) -> Path:
        return self._dir


@pytest.mark.parametrize("how, said", [("SIGILL", "killed by signal SIGILL (illegal instruction"),
                                       ("SIGABRT", "killed by signal SIGABRT"), ("3", "exited with status 3")])
def test_a_dying_align_child_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, said: str) -> None:
    real = subprocess.Popen
    launched: list[list[str]] = []

    def popen(cmd, **kw):   # the launcher's command, with the child replaced by one that dies as told
        launched.append(cmd)
        return real([sys.executable, "-m", "tests.support.procs_child", how], **kw)

    monkeypatch.setattr(job_handlers.subprocess, "Popen", popen)
    with pytest.raises(JobError) as exc:
        job_handlers._align_subprocess(_Ctx(tmp_path), [], {}, tmp_path / "adapter")
    msg = str(exc.value)
    assert msg.startswith("accelerate launch (the align job's DPO) " + ("was " if how.startswith("SIG") else ""))
    assert said in msg and f"evaluating 64 tokens, then {how}" in msg and str(tmp_path / "align.log") in msg
    assert launched[0][1:4] == ["-m", "accelerate.commands.launch", "-m"]
    if how == "SIGILL":
        assert "Fatal Python error: Illegal instruction" in msg   # faulthandler on in the child
