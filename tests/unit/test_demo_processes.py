"""The demo says how its processes died: a server, worker or agent killed by a signal is reported with the
signal's name and its log's last lines; llama.cpp is checked in a child before anything starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import arte.backends.llama_check as lc
from arte_cli import demo
from arte_cli.demo import DemoConfig, DemoError, _env, _Fleet
from tests.support.llama_check_fakes import child_code


@pytest.fixture
def fleet(tmp_path: Path) -> _Fleet:
    cfg = DemoConfig(task=demo._default_task(), work_dir=tmp_path)
    f = _Fleet(cfg, _env(cfg))
    yield f
    f.stop()


def test_a_worker_killed_by_sigill_is_named_with_its_log(fleet: _Fleet) -> None:
    fleet.spawn("worker", "the job worker", "tests.support.procs_child", "SIGILL")
    fleet.procs[-1].wait(timeout=60)
    with pytest.raises(DemoError) as exc:
        fleet.check_alive("elicit")
    msg = str(exc.value)
    assert msg.startswith("the job worker (during elicit) was killed by signal SIGILL (illegal instruction")
    assert "evaluating 64 tokens, then SIGILL" in msg                # unbuffered: the line reached the log
    assert "Fatal Python error: Illegal instruction" in msg          # faulthandler is on in the children
    assert str(fleet.logs / "worker.log") in msg


def test_a_step_that_dies_says_how(fleet: _Fleet) -> None:
    with pytest.raises(DemoError) as exc:
        fleet.run("device-1-score", "tests.support.procs_child", "SIGSEGV")
    assert "step 'device-1-score' (tests.support.procs_child) was killed by signal SIGSEGV" in str(exc.value)
    assert "evaluating 64 tokens" in str(exc.value)
    with pytest.raises(DemoError, match=r"exited with status 7; last lines of its log .*\n.*then 7"):
        fleet.run("device-2-score", "tests.support.procs_child", "7")


def test_preflight_stops_the_demo_before_any_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    real = lc.run_child
    monkeypatch.setattr(lc, "run_child",
                        lambda cmd, **kw: real([sys.executable, "-c", child_code(die="SIGILL")], **kw))
    spawned: list = []
    monkeypatch.setattr(_Fleet, "start", lambda self: spawned.append(self))
    with pytest.raises(DemoError, match="killed by signal SIGILL") as exc:
        demo.run_demo(DemoConfig(task=demo._default_task(), work_dir=tmp_path / "run", model=str(model)),
                      log=lambda m: None)
    assert "rebuild: make install" in str(exc.value) and spawned == []
