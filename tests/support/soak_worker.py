"""A real ``arte-server worker`` process with a fake teacher and a fake DPO, for the campaign soak test
(``python -m tests.support.soak_worker --data-dir DIR``; settings come from ``ARTE_SERVER_*`` like the real one).

Everything but the models is real: the worker's loop, the queue, the job handlers, the campaign driver and the
database. The teacher writes two rationales per question: ``expert`` says to check the sport (the soak
test's students then answer right), ``plain`` does not (they guess), so devices' scores separate the two
and the align job finds pairs; ``arte.dpo.align`` is replaced by a function that writes an adapter
directory with its metadata. Each model call takes ``SOAK_MODEL_S`` seconds, so a worker can be killed in
the middle of a job.

``SOAK_CRASH=kind,kind`` and ``SOAK_CRASH_DIR``: the first job of each kind listed (across every worker
process: a marker file in the directory records it) kills its worker with ``os._exit`` after the handler
stored its output and before the job is marked succeeded, the window in which a naive handler would
store a second round, adapter or dataset when the job is run again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import arte.dpo
from arte.prompts import question_block
from server import job_handlers, queue
from server.cli import main
from tests.support.teacher_fakes import ScriptedTeacher, asked_question, is_question_prompt

MODEL_S = float(os.environ.get("SOAK_MODEL_S", "0"))
SPORTS = ["football", "basketball", "hockey", "tennis", "golf", "baseball"]
RULE = "I check the sport of the player and of the action"


def reply(messages: list[dict[str, str]], kw: dict[str, Any], i: int) -> str:
    if messages[-1]["role"] == "assistant":
        return ""
    if is_question_prompt(messages):
        start = (kw["seed"] + i) % 3
        return question_block([f"Player {start * 4 + k} played {SPORTS[(start + k) % 6]} today" for k in range(4)])
    q = asked_question(messages)
    system = messages[0]["content"].lower()
    answer = "yes" if sum(map(ord, q)) % 2 else "no"
    if "expert" in system:
        return f"{RULE}. <ans>{answer}</ans>"
    return f"It sounds fine to me. <ans>{answer}</ans>"


def open_teacher(settings: Any, adapter: str | None) -> ScriptedTeacher:
    time.sleep(MODEL_S)
    return ScriptedTeacher(reply, adapter=adapter)


def fake_align(model: Any, pairs: list[Any], config: Any, out_dir: Path, **kw: Any) -> arte.dpo.AlignResult:
    time.sleep(MODEL_S)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "adapter_config.json").write_text("{}")
    held = {"pairs": 1, "before": {"margin": 0.0, "accuracy": 0.5}, "after": {"margin": 0.2, "accuracy": 1.0}}
    meta = {"pairs": {"total": len(pairs), "trained": len(pairs) - 1, "held_out": 1}, "steps": 1,
            "reward": {"held_out": held}, "reward_margin": {"on": "held_out", "before": 0.0, "after": 0.2},
            "seconds": MODEL_S}
    (out_dir / arte.dpo.METADATA_FILE).write_text(json.dumps(meta))
    return arte.dpo.AlignResult(out_dir, meta)


def _crash_after_storing() -> None:
    kinds = {k for k in os.environ.get("SOAK_CRASH", "").split(",") if k}
    marks = Path(os.environ.get("SOAK_CRASH_DIR", "."))
    real_succeed = queue.succeed

    def succeed(sessions: Any, c: queue.Claim, result: dict[str, Any], now: Any) -> bool:
        mark = marks / f"crashed-{c.kind}"
        if c.kind in kinds and not mark.exists():
            mark.write_text(c.job_id)
            os._exit(137)   # as if killed: the handler's output is stored, the job still says running
        return real_succeed(sessions, c, result, now)

    queue.succeed = succeed   # the worker module calls queue.succeed through the module


if __name__ == "__main__":
    job_handlers._open_teacher = open_teacher
    job_handlers.align = fake_align   # the handlers call align by the name they imported
    _crash_after_storing()
    sys.exit(main(sys.argv[1:]))
