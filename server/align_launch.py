"""Entry point of an align job run as ``accelerate launch -m server.align_launch SPEC.json``.

The worker writes SPEC (teacher model reference, DPO config, output dir, the preference pairs) and
starts this module under ``accelerate`` so DPO can use every GPU (DeepSpeed/FSDP by accelerate config);
it exits non-zero on failure and the worker records the log tail. Set ``ARTE_SERVER_ALIGN_LAUNCHER=
accelerate`` and, e.g., ``ARTE_SERVER_ACCELERATE_ARGS='["--num_processes","4"]'``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from arte.dpo import AlignConfig, align
    from arte.pairs import Pair

    from arte.models import resolve_model
    from arte_cli.home import model_dir

    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    pairs = [Pair(**p) for p in spec["pairs"]]
    align(
        resolve_model(spec["teacher_model"], model_dir()),
        pairs,
        AlignConfig(**spec["config"]),
        Path(spec["out_dir"]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
