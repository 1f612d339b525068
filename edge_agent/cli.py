"""``edge-agent``: the device agent's command line (one click group).

Every data command takes ``--json`` and then prints exactly one JSON document on stdout; progress bars
and logs go to stderr. Exit codes: see :class:`edge_agent.errors.ExitCode`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from arte.errors import ArteError, BackendError, ConfigError, DraftFormatError, ModelError, TaskFormatError
from edge_agent.errors import ExitCode


def fail(err: ArteError) -> NoReturn:
    code = ExitCode.RUNTIME
    if isinstance(err, (TaskFormatError, DraftFormatError, ConfigError)):
        code = ExitCode.INPUT
    elif isinstance(err, ModelError):
        code = ExitCode.MODEL
    elif isinstance(err, BackendError):
        code = ExitCode.RUNTIME
    click.echo(f"error: {err}", err=True)
    sys.exit(int(code))


def emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human)


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes:\n\n" + ExitCode.help_text())
def main() -> None:
    """ARTE edge agent: scores teacher drafts on this device's private data and fine-tunes the student."""


@main.command()
@click.option("--task", "task_path", required=True, type=click.Path(path_type=Path),
              help="The device's labelled data: a BIG-bench task.json or JSONL file (never sent anywhere).")
@click.option("--drafts", "drafts_path", required=True, type=click.Path(path_type=Path),
              help="Teacher drafts, JSONL with id, question, rationale, answer.")
@click.option("--model", "model", default="default", show_default=True,
              help="'default', a .gguf file or a Hugging Face model directory.")
@click.option("--backend", type=click.Choice(["llama", "torch", "onnx"]), default="llama", show_default=True,
              help="Model runtime.")
@click.option("--mode", type=click.Choice(["loglik", "generate"]), default="loglik", show_default=True,
              help="loglik: best option by log-probability (multiple choice); generate: the paper's greedy "
                   "answer + exact match.")
@click.option("--items", "n_items", type=click.IntRange(min=1), default=None,
              help="Score on at most this many validation items (default: all).")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the validation/holdout split.")
@click.option("--validation", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of the data used for scoring; the rest is the holdout.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all).")
@click.option("--max-new-tokens", default=96, show_default=True, type=click.IntRange(1, 4096),
              help="Generation budget per item (generate mode).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def score(task_path: Path, drafts_path: Path, model: str, backend: str, mode: str, n_items: int | None,
          split_seed: int, validation: float, threads: int | None, max_new_tokens: int, as_json: bool) -> None:
    """Score drafts locally by the student's one-shot accuracy; prints scores only."""
    from tqdm import tqdm

    from arte.backends import open_student
    from arte.drafts import read_drafts
    from arte.models import resolve_model
    from arte.scoring import ScoringConfig, score_drafts
    from arte.tasks import load_task, split_task
    from arte_cli.home import convert_dir, model_dir

    try:
        cfg = ScoringConfig(mode=mode, max_new_tokens=max_new_tokens)
        task = load_task(task_path)
        items = list(split_task(task, seed=split_seed, n_seeds=0, validation=validation).validation)
        items = items[:n_items] if n_items else items
        drafts = read_drafts(drafts_path)
        ref = resolve_model(model, model_dir())
        student = open_student(ref, backend, n_threads=threads, convert_dir=convert_dir())
        try:
            with tqdm(total=len(drafts) * len(items), desc="scoring", unit="item", file=sys.stderr,
                      disable=None) as bar:
                result = score_drafts(student, task, drafts, items, cfg, progress=bar.update)
            tokens = getattr(student, "tokens_evaluated", None)
        finally:
            student.close()
    except ArteError as e:
        fail(e)
    data = {"task": task.name, "mode": mode, "model": ref.name, "backend": backend, "n_items": len(items),
            "seconds": round(result.stats["seconds"], 3), "tokens_evaluated": tokens,
            "scores": [{"draft_id": s.draft_id, "n_items": s.n_items, "n_correct": s.n_correct,
                        "accuracy": round(s.accuracy, 4)} for s in result.scores]}
    lines = [f"{task.name}: {len(drafts)} drafts x {len(items)} items, mode {mode}, "
             f"{data['seconds']} s", f"{'draft':30} correct/items  accuracy"]
    lines += [f"{s.draft_id[:30]:30} {s.n_correct:>7}/{s.n_items:<5} {s.accuracy:8.3f}" for s in result.scores]
    emit(data, as_json, "\n".join(lines))


@main.command()
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Tailored training data: JSONL with id, question, rationale, answer per line.")
@click.option("--task", "task_path", required=True, type=click.Path(path_type=Path),
              help="The device's labelled data (task.json or JSONL): its holdout split judges the adapter.")
@click.option("--model", "model", default="default", show_default=True,
              help="'default', a .gguf file or a Hugging Face model directory.")
@click.option("--adapters", "adapters_dir", type=click.Path(path_type=Path), default=None,
              help="Adapter store directory (default: $ARTE_HOME/adapters).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoints of this job (default: under $ARTE_HOME/sft-work, keyed by data and settings); "
                   "rerunning the same command resumes from it.")
@click.option("--backend", type=click.Choice(["llama", "torch"]), default="llama", show_default=True,
              help="Runtime of the before/after evaluation.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps (default: --epochs).")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1), help="Passes over the data.")
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate (AdamW, warm-up then cosine).")
@click.option("--rank", default=8, show_default=True, type=click.IntRange(min=1), help="LoRA rank.")
@click.option("--lora-alpha", default=16.0, show_default=True, type=float, help="LoRA alpha (scale alpha/rank).")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Packed rows per optimizer step.")
@click.option("--max-length", default=256, show_default=True, type=click.IntRange(min=8),
              help="Tokens per packed row; longer records are left out.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of training; then the job checkpoints and stops (status incomplete; rerun to resume).")
@click.option("--memory-budget", type=click.IntRange(min=1), default=None,
              help="MiB of resident memory for training; picks micro-batches (and checkpointing) to fit.")
@click.option("--holdout", "n_holdout", type=click.IntRange(min=1), default=None,
              help="Evaluate on at most this many holdout items (default: all).")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the validation/holdout split.")
@click.option("--validation", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Share of the task used for scoring drafts; the rest is the holdout.")
@click.option("--eval-mode", type=click.Choice(["generate", "loglik"]), default="generate", show_default=True,
              help="generate: greedy rationale + exact match on <ans>; loglik: likeliest option (multiple choice).")
@click.option("--shots", default="0,3", show_default=True, help="Comma-separated shot counts to evaluate.")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1, 4096),
              help="Generation budget per holdout item.")
@click.option("--significance", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Keep the adapter only if the one-sided exact McNemar p-value (0-shot) is at most this.")
@click.option("--min-gain", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="...and its accuracy gain exceeds this fraction.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def train(data_path: Path, task_path: Path, model: str, adapters_dir: Path | None, work_dir: Path | None,
          backend: str, steps: int | None, epochs: int, lr: float, rank: int, lora_alpha: float, batch_size: int,
          max_length: int, threads: int | None, time_budget: float | None, memory_budget: int | None,
          n_holdout: int | None, split_seed: int, validation: float, eval_mode: str, shots: str,
          max_new_tokens: int, significance: float, min_gain: float, as_json: bool) -> None:
    """Fine-tune the student with LoRA on tailored data, evaluate before/after on the local holdout, and
    activate the new adapter only if it is better. Prints the verdict and accuracies."""
    from edge_agent.train import TrainOptions, run_train

    try:
        shot_counts = tuple(int(x) for x in shots.split(",") if x.strip())
    except ValueError:
        fail(ConfigError("shots", f"expected comma-separated integers, got {shots!r}"))
    opts = TrainOptions(data=data_path, task=task_path, model=model, adapters_dir=adapters_dir, work_dir=work_dir,
                        backend=backend, steps=steps, epochs=epochs, lr=lr, rank=rank, lora_alpha=lora_alpha,
                        batch_size=batch_size, max_length=max_length, threads=threads, time_budget=time_budget,
                        memory_budget=memory_budget, holdout=n_holdout, split_seed=split_seed,
                        validation=validation, eval_mode=eval_mode, shots=shot_counts,
                        max_new_tokens=max_new_tokens, significance=significance, min_gain=min_gain)
    try:
        data, human = run_train(opts)
    except ArteError as e:
        fail(e)
    emit(data, as_json, human)

if __name__ == "__main__":  # pragma: no cover
    main()
