"""Children for the llama.cpp self-check that build nothing: they report the stages a real check reports
(arte.backends.llama_check) with the build and model facts a test chooses, then pass or die on purpose."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

from arte.backends import llama_check as lc


def child_code(*, features: tuple[str, ...] = ("NEON", "ARM_FMA", "FP16_VA", "DOTPROD"), gpu: bool = False,
               quantization: str = "Q4_1", die: str | None = None) -> str:
    """Python source of a child: reports a build with ``features`` / ``gpu`` and a model of ``quantization``,
    then dies of signal ``die`` (e.g. ``"SIGILL"``) or reports a passing batch."""
    build = {"stage": "build", "version": lc.LLAMA_CPP_VERSION, "gpu_offload": gpu, "cpu_features": list(features),
             "system_info": "CPU : " + " | ".join(f"{f} = 1" for f in features) + " |"}
    loaded = {"stage": "loaded", "quantization": quantization, "n_gpu_layers": -1 if gpu else 0}
    done = {"stage": "done", "batch_tokens": 105, "prefix_tokens": 64, "sequences": 8, "generated": 12,
            "parallel": 4, "problem": None}
    lines = ["import os, signal, sys"]
    lines += [f"print({lc._MARK!r} + {json.dumps(json.dumps(d))}, flush=True)" for d in (build, loaded)]
    if die:
        lines.append(f"os.kill(os.getpid(), signal.{die})")
    lines.append(f"print({lc._MARK!r} + {json.dumps(json.dumps(done))}, flush=True)")
    return "\n".join(lines) + "\n"


def fake_llama_check(code: str, calls: list[dict[str, Any]] | None = None) -> Callable[[Path], Any]:
    """A stand-in for ``edge_agent.cli._llama_check``: the real self-check, its child replaced by ``code``;
    the keyword arguments of each call are appended to ``calls``."""
    def factory(root: Path) -> Any:
        real = functools.partial(lc.self_check, cpuinfo_path=root / "proc" / "cpuinfo",
                                 command=[sys.executable, "-c", code])

        def check(model_path: Path, **kw: Any) -> Any:
            if calls is not None:
                calls.append(kw)
            return real(model_path, **kw)
        return check
    return factory
