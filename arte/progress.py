"""Progress reporting shared by the long-running entry points (elicit, align, tailor, pipeline).

Contract: a progress callback is ``progress(stage, done, total)``: ``stage`` names the step (e.g.
``"questions"``, ``"rationales"``, ``"train"``), ``done`` and ``total`` count its units (``total`` may
grow when a stage learns it needs more work, e.g. more question prompts after rejections). Callbacks must
be cheap; the library calls them from the thread doing the work. A callback may raise to abort the work
(e.g. a cancelled job): the exception propagates unchanged and no output file is left half-written. Shells
turn them into tqdm bars (the CLI) or job heartbeats (the server: ``lambda stage, done, total:
ctx.progress(done / total if total else None)``).
"""

from __future__ import annotations

from typing import Callable, Optional

__all__ = ["Progress", "report"]

Progress = Callable[[str, int, int], None]


def report(progress: Optional[Progress], stage: str, done: int, total: int) -> None:
    """Call ``progress`` when one was given."""
    if progress is not None:
        progress(stage, done, total)
