"""``edge-agent train``: the shell around :func:`arte.finetune.finetune` (paths, progress bars, summary).

Contract: ``run_train(options)`` resolves the model and the per-user directories (``$ARTE_HOME``), builds the
configs (invalid values raise :class:`arte.errors.ConfigError` naming the option's field), runs the job
with tqdm bars on stderr, and returns ``(json document, human summary)``. The work directory is keyed by
the data, the task and the training settings, so rerunning an interrupted command resumes its training;
it is removed once the job has stored its adapter.

Before torch is loaded, ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (an explicit setting wins): the agent
shares its device, and with OpenMP's default active spin-wait two training threads on a busy 2-core
machine ran 5-9x slower than with passive waiting (measured; see ``benchmarks/sft.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arte.scoring import DEFAULT_MODE

__all__ = ["TrainOptions", "run_train"]


@dataclass(frozen=True)
class TrainOptions:
    """The command's options, as given."""

    data: Path
    task: Path
    model: str = "default"
    adapters_dir: Path | None = None
    work_dir: Path | None = None
    backend: str = "llama"
    steps: int | None = None
    epochs: int = 1
    lr: float = 2e-4
    rank: int = 8
    lora_alpha: float = 16.0
    batch_size: int = 4
    max_length: int = 256
    threads: int | None = None
    time_budget: float | None = None
    memory_budget: int | None = None
    precision: str = "auto"
    holdout: int | None = None
    split_seed: int = 0
    validation: float = 0.5
    eval_mode: str = DEFAULT_MODE
    shots: tuple[int, ...] = (0, 3)
    max_new_tokens: int = 128
    significance: float = 0.05
    min_gain: float = 0.0


def _work_key(data: Path, task: Path, ref_sha: str | None, fingerprint: str) -> str:
    from arte.models import sha256_file

    h = hashlib.sha256()
    for part in (sha256_file(data), sha256_file(task), ref_sha or "", fingerprint):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _human(r: dict[str, Any]) -> str:
    lines = [f"status: {r['status']}" + (f" (version {r['version']})" if r["version"] else ""),
             f"active adapter: {r['active'] or 'none (base model)'} (before: {r['previous'] or 'none'})",
             f"training: {r['sft']['steps']}/{r['sft']['total_steps']} steps, {r['sft']['tokens_per_s']} tok/s, "
             f"peak RSS {r['sft']['peak_rss_mb']:.0f} MiB, {r['sft']['precision']}"]
    if r["before"]:
        lines.append(f"{'shots':>5} {'before':>8} {'after':>8}   ({r['n_holdout']} holdout items)")
        for k in r["before"]:
            lines.append(f"{k:>5} {r['before'][k]['accuracy']:8.3f} {r['after'][k]['accuracy']:8.3f}")
        lines.append(f"decision: {r['decision']['reason']}")
    else:
        lines.append("training stopped before the end (time budget); rerun the same command to resume")
    return "\n".join(lines)


def run_train(o: TrainOptions) -> tuple[dict[str, Any], str]:
    """Run the fine-tuning job for the options; returns (JSON document, human summary)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # read once, when torch loads OpenMP
    from tqdm import tqdm

    from arte.adapters import AdapterStore
    from arte.drafts import read_drafts
    from arte.evaluate import EvalConfig
    from arte.finetune import FinetuneConfig, finetune
    from arte.models import resolve_model
    from arte.sft import SFTConfig
    from arte.tasks import load_task
    from arte.home import arte_home, convert_dir, model_dir

    sft = SFTConfig(rank=o.rank, alpha=o.lora_alpha, lr=o.lr, epochs=o.epochs, max_steps=o.steps,
                    batch_size=o.batch_size, max_length=o.max_length, threads=o.threads,
                    memory_budget_mb=o.memory_budget, time_budget_s=o.time_budget, precision=o.precision)
    ev = EvalConfig(mode=o.eval_mode, shots=o.shots, decide_on=0 if 0 in o.shots else o.shots[0],
                    max_new_tokens=o.max_new_tokens, alpha=o.significance, min_gain=o.min_gain)
    config = FinetuneConfig(sft=sft, eval=ev, backend=o.backend, split_seed=o.split_seed, validation=o.validation,
                            holdout_items=o.holdout, n_threads=o.threads)
    task = load_task(o.task)
    records = read_drafts(o.data)
    ref = resolve_model(o.model, model_dir())
    store = AdapterStore(o.adapters_dir or arte_home() / "adapters")
    work = o.work_dir or arte_home() / "sft-work" / _work_key(o.data, o.task, ref.sha256, sft.fingerprint())

    bars: dict[str, Any] = {}

    def progress(phase: str, n: int, total: int) -> None:
        if phase not in bars:
            for b in bars.values():
                b.close()
            bars[phase] = tqdm(total=total, desc=phase, unit="step" if phase == "train" else "item",
                               file=sys.stderr, disable=None)
        bars[phase].update(n)

    try:
        result = finetune(ref, task, records, store, work, config, convert_dir=convert_dir(), progress=progress)
    finally:
        for b in bars.values():
            b.close()
    if result.status != "incomplete" and o.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    data = {"task": task.name, "data": str(o.data), "model": ref.name, "backend": o.backend,
            "adapters": str(store.root), **result.to_dict(), "options": {k: str(v) if isinstance(v, Path) else v
                                                                         for k, v in asdict(o).items()}}
    return data, _human(data)
