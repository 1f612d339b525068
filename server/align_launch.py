"""Entry point of an align job run as ``accelerate launch -m server.align_launch SPEC.json``.

The worker writes SPEC (teacher model reference, DPO config, output dir, the preference pairs) and
starts this module under ``accelerate`` so DPO can use every GPU (DeepSpeed/FSDP by accelerate config);
it exits non-zero on failure and the worker records the log tail. With ``checkpoint_dir`` in SPEC it
saves checkpoints there and resumes from the newest one (the worker passes the job's work dir). Set ``ARTE_SERVER_ALIGN_LAUNCHER=
accelerate`` and, e.g., ``ARTE_SERVER_ACCELERATE_ARGS='["--num_processes","4"]'``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from arte.dpo import AlignConfig, align
from arte.home import convert_dir, model_dir
from arte.models import resolve_model
from arte.pairs import pair_from_dict


def main(argv: list[str] | None = None) -> int:
    path = (argv or sys.argv[1:])[0]
    spec = json.loads(Path(path).read_text())
    pairs = [pair_from_dict(p, path=path, line=i) for i, p in enumerate(spec["pairs"])]
    align(
        resolve_model(spec["teacher_model"], model_dir()),
        pairs,
        AlignConfig(**spec["config"]),
        Path(spec["out_dir"]),
        convert_dir=convert_dir(),
        checkpoint_dir=spec.get("checkpoint_dir"),
        resume=spec.get("checkpoint_dir") is not None,   # a retried job goes on from its last checkpoint
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
