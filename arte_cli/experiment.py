"""``arte experiment``: the paper's conditions (untuned; Original Teacher; ARTE; the ablations Question Only
and Rationale Only), 0- and 3-shot accuracy on each task's holdout over teacher seeds × SFT seeds, with 95%
bootstrap intervals (:mod:`arte_cli.experiment_run` says what each condition trains on).

Contract: the command validates every option before any model is loaded (a bad value is a usage error,
exit 2, that names the option), runs :func:`arte_cli.experiment_run.run_experiment` with tqdm bars on
stderr, writes ``experiment.json`` (every per-seed, per-item outcome; :mod:`arte_cli.experiment_report`)
and ``experiment.png`` into ``--out``, and prints the human table followed by a last line of JSON (where
the files are and every interval); with ``--json`` it prints the whole document instead. Reruns with the
same settings reuse every cached step under ``--work`` (default ``<out>/work``). A condition whose drafts
give no preference pair of its kind is reported as ``no_signal``, a task where every pair condition has
none as ``no_signal`` (one without training data as ``no_data``), with the numbers, and the other tasks
still run.

Defaults are sized for 2 CPU cores and the embedded 135M model (a few minutes per task and seed); the
paper's scale is reached by flags (``--n-questions 250 --tailor-questions 250 --holdout 1000`` …).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from arte.backends import LOCAL_BACKENDS
from arte.dpo import AlignConfig
from arte.elicit import ElicitConfig
from arte.errors import ArteError, ConfigError
from arte.pairs import PairConfig
from arte.pipeline import PipelineConfig
from arte.procs import passive_openmp
from arte.scoring import MODE_HELP, MODES
from arte.sft import SFTConfig
from arte.tailor import TailorConfig
from arte.tasks import load_task
from arte_cli.experiment_report import CONDITIONS, brief, plot, table
from arte_cli.experiment_run import ExperimentSettings, run_experiment
from arte_cli.output import fail, session, set_threads
from arte_cli.teacher import parse_styles

__all__ = ["experiment"]

SETTINGS_OPTIONS = {"seeds": "--seeds", "eval_mode": "--eval-mode", "shots": "--shots", "holdout": "--holdout",
                    "train_size": "--train-size", "teacher_seeds": "--teacher-seeds", "conditions": "--conditions"}
PIPELINE_OPTIONS = {"n_seeds": "--n-seeds", "n_validation": "--validation", "select_items": "--select-items"}
CONDITIONS_HELP = ("untuned (the base student); original = Original Teacher (the unaligned teacher's drafts, "
                   "per question the rationale the student scored best: selection, no DPO); arte = ARTE (DPO "
                   "on question and rationale pairs, then tailored data); question-only = Question Only and "
                   "rationale-only = Rationale Only (DPO on only the question / only the rationale pairs, then "
                   "tailored data)")
PAIR_OPTIONS = {"confidence": "--pair-confidence", "n_seeds": "--n-seeds"}
ELICIT_OPTIONS = {"n_questions": "--n-questions", "styles": "--styles", "question_max_new_tokens": "--question-tokens",
                  "rationale_max_new_tokens": "--rationale-tokens", "n_seeds": "--n-seeds"}
TAILOR_OPTIONS = {"n_questions": "--tailor-questions", "check_samples": "--check-samples",
                  "question_max_new_tokens": "--question-tokens", "rationale_max_new_tokens": "--rationale-tokens",
                  "n_seeds": "--n-seeds"}
ALIGN_OPTIONS = {"learning_rate": "--align-lr", "beta": "--align-beta", "epochs": "--align-epochs",
                 "max_steps": "--align-steps", "batch_size": "--align-batch-size", "seed": "--align-seed"}
SFT_OPTIONS = {"lr": "--sft-lr", "epochs": "--sft-epochs", "rank": "--sft-rank", "batch_size": "--sft-batch-size",
               "max_length": "--sft-max-length", "alpha": "--sft-rank"}


def _shots(value: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated counts such as 0,3, got {value!r}",
                                 param_hint="'--shots'") from None
    if not shots:
        raise click.BadParameter("give at least one shot count", param_hint="'--shots'")
    return shots


def _conditions(value: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in value.split(",") if x.strip())
    bad = [x for x in names if x not in CONDITIONS]
    if bad or not names:
        raise click.BadParameter(f"expected names among {', '.join(CONDITIONS)}, got {value!r}",
                                 param_hint="'--conditions'")
    return names


def _build(ctor: Callable[..., Any], options: dict[str, str], **kw: Any) -> Any:
    """``ctor(**kw)``, its :class:`ConfigError` turned into a usage error that names the CLI option."""
    try:
        return ctor(**kw)
    except ConfigError as e:
        raise click.BadParameter(e.problem, param_hint=f"'{options.get(e.field, e.field)}'") from None


def _check_tasks(paths: tuple[Path, ...], eval_mode: str) -> None:
    """Every task loads, names are distinct (they name the work directories) and fit ``--eval-mode``."""

    names: dict[str, Path] = {}
    for p in paths:
        try:
            task = load_task(p)
        except ArteError as e:
            raise click.BadParameter(str(e), param_hint="'--task'") from None
        if task.name in names:
            raise click.BadParameter(f"{p} and {names[task.name]} are both named {task.name!r}",
                                     param_hint="'--task'")
        names[task.name] = p
        if eval_mode == "loglik" and task.kind != "multiple_choice":
            raise click.BadParameter(f"loglik scores multiple-choice items; {p} is {task.kind} "
                                     f"(use auto, cot-choice or generate)", param_hint="'--eval-mode'")


def _settings(o: dict[str, Any]) -> Any:
    """The :class:`~arte_cli.experiment_run.ExperimentSettings` of the command's options."""

    q = {"seed": o["seed"], "n_seeds": o["n_seeds"], "question_max_new_tokens": o["question_tokens"]}
    elicit = _build(ElicitConfig, ELICIT_OPTIONS, n_questions=o["n_questions"], styles=parse_styles(o["styles"]),
                    rationale_max_new_tokens=o["rationale_tokens"], **q)
    tailor = _build(TailorConfig, TAILOR_OPTIONS, n_questions=o["tailor_questions"],
                    check_samples=o["check_samples"], rationale_max_new_tokens=o["rationale_tokens"], **q)
    align = _build(AlignConfig, ALIGN_OPTIONS, learning_rate=o["align_lr"], beta=o["align_beta"],
                   epochs=o["align_epochs"], max_steps=o["align_steps"], batch_size=o["align_batch_size"],
                   seed=o["align_seed"], eval_pairs=16)
    pairs = _build(PairConfig, PAIR_OPTIONS, n_seeds=o["n_seeds"], confidence=o["pair_confidence"])
    pipeline = _build(PipelineConfig, PIPELINE_OPTIONS, elicit=elicit, pairs=pairs,
                      align=align, tailor=tailor, n_seeds=o["n_seeds"], n_validation=o["n_validation"],
                      split_seed=o["split_seed"], select_items=o["select_items"])
    sft = _build(SFTConfig, SFT_OPTIONS, rank=o["sft_rank"], alpha=2.0 * o["sft_rank"], lr=o["sft_lr"],
                 epochs=o["sft_epochs"], batch_size=o["sft_batch_size"], max_length=o["sft_max_length"],
                 threads=o["threads"])
    return _build(ExperimentSettings, SETTINGS_OPTIONS, pipeline=pipeline, sft=sft, teacher=o["teacher"],
                  student=o["student"], teacher_backend=o["teacher_backend"], student_backend=o["student_backend"],
                  seeds=o["seeds"], teacher_seeds=o["teacher_seeds"], conditions=_conditions(o["conditions"]),
                  eval_mode=o["eval_mode"], shots=_shots(o["shots"]), holdout=o["holdout"],
                  train_size=o["train_size"], max_new_tokens=o["max_new_tokens"], n_boot=o["bootstrap"],
                  level=o["level"], threads=o["threads"])


def _int(minimum: int) -> click.IntRange:
    return click.IntRange(min=minimum)


@click.command()
@click.option("--task", "tasks", multiple=True, required=True, type=click.Path(path_type=Path),
              help="BIG-bench task.json or JSONL file (repeat for several tasks).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for experiment.json and experiment.png.")
@click.option("--work", "work_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache of every step, reused by reruns (default: OUT/work).")
@click.option("--teacher", default="default", show_default=True,
              help="Teacher model: 'default', a .gguf file or an HF directory.")
@click.option("--teacher-backend", type=click.Choice(LOCAL_BACKENDS), default="llama", show_default=True,
              help="Runtime that writes drafts (tailoring with a DPO adapter runs on torch).")
@click.option("--student", default="default", show_default=True,
              help="Student model: 'default', a .gguf file or an HF directory.")
@click.option("--student-backend", type=click.Choice(["auto", "llama", "torch"]), default="auto",
              show_default=True, help="Runtime that scores drafts and evaluates (auto: llama for GGUF).")
@click.option("--conditions", default="untuned,original,arte,question-only,rationale-only", show_default=True,
              help=f"Conditions to run, comma-separated: {CONDITIONS_HELP}.")
@click.option("--teacher-seeds", default=2, show_default=True, type=_int(1),
              help="Teacher sampling seeds (--seed, --seed+1, ...): drafts, pairs, DPO and tailored data are "
                   "made per teacher seed, and the intervals resample them.")
@click.option("--seeds", default=2, show_default=True, type=_int(1),
              help="SFT runs per fine-tuned condition and teacher seed (the seed varies LoRA init and data order).")
@click.option("--eval-mode", type=click.Choice(["auto", *MODES]), default="auto", show_default=True,
              help=f"Evaluation and draft scoring (auto: cot-choice for multiple choice, else generate). {MODE_HELP}")
@click.option("--shots", default="0,3", show_default=True, help="Shot counts to evaluate, comma-separated.")
@click.option("--holdout", default=100, show_default=True, type=_int(1), help="Holdout items evaluated per task.")
@click.option("--train-size", type=_int(1), default=None,
              help="Training examples per condition (default: the smaller dataset's size).")
@click.option("--n-questions", default=12, show_default=True, type=_int(1),
              help="Draft questions to elicit per teacher seed (the Original Teacher keeps one rationale of each).")
@click.option("--styles", default="expert,rules,plain,eliminate", show_default=True,
              help="Rationale styles of the drafts, comma-separated.")
@click.option("--validation", "n_validation", default=12, show_default=True, type=_int(1),
              help="Validation items the student scores drafts on.")
@click.option("--select-items", default=0, show_default=True, type=_int(0),
              help="Judge drafts (pairs and the Original Teacher's choice) on the top-k validation items by IRT "
                   "discrimination, label-balanced, fit on the draft x item matrix (0: all items).")
@click.option("--pair-confidence", default=0.9, show_default=True, type=float,
              help="Level at which a preference pair's chosen must beat rejected beyond noise (0: point "
                   "estimates); a task whose drafts give no pair is reported as no signal.")
@click.option("--n-seeds", default=3, show_default=True, type=_int(1),
              help="Seed examples of the task (teacher prompts and k-shot demonstrations).")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the task split.")
@click.option("--question-tokens", default=384, show_default=True, type=_int(1),
              help="Teacher reply budget per question prompt.")
@click.option("--rationale-tokens", default=128, show_default=True, type=_int(1),
              help="Teacher reply budget per rationale.")
@click.option("--tailor-questions", default=40, show_default=True, type=_int(1),
              help="Questions each aligned teacher (ARTE, Question Only, Rationale Only) writes training data for.")
@click.option("--check-samples", default=1, show_default=True, type=click.IntRange(0, 16),
              help="Consistency samples a training example must agree with.")
@click.option("--seed", default=0, show_default=True, help="First teacher sampling seed.")
@click.option("--align-lr", default=5e-4, show_default=True, type=float, help="DPO learning rate (LoRA).")
@click.option("--align-beta", default=0.1, show_default=True, type=float, help="DPO beta.")
@click.option("--align-epochs", default=2.0, show_default=True, type=float, help="DPO passes over the pairs.")
@click.option("--align-steps", default=-1, show_default=True, type=int, help="DPO steps (-1: use --align-epochs).")
@click.option("--align-batch-size", default=4, show_default=True, type=_int(1), help="Pairs per DPO step.")
@click.option("--align-seed", default=0, show_default=True, help="DPO seed.")
@click.option("--sft-epochs", default=3, show_default=True, type=_int(1), help="Student SFT epochs.")
@click.option("--sft-lr", default=1e-3, show_default=True, type=float, help="Student SFT learning rate.")
@click.option("--sft-rank", default=8, show_default=True, type=_int(1), help="Student LoRA rank (alpha = 2 x rank).")
@click.option("--sft-batch-size", default=4, show_default=True, type=_int(1), help="Packed rows per SFT step.")
@click.option("--sft-max-length", default=384, show_default=True, type=_int(8),
              help="Tokens per packed row; longer examples are left out of both conditions.")
@click.option("--max-new-tokens", default=128, show_default=True, type=_int(1),
              help="Generation budget per item in the reasoning modes (cot-choice: the reasoning budget).")
@click.option("--bootstrap", default=2000, show_default=True, type=_int(100), help="Bootstrap replicates.")
@click.option("--level", default=0.95, show_default=True, type=click.FloatRange(0.5, 0.999),
              help="Confidence level of the intervals.")
@click.option("--threads", type=_int(1), default=None, help="CPU threads for the models.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result document on stdout.")
def experiment(tasks: tuple[Path, ...], out_dir: Path, work_dir: Path | None, verbose: bool, as_json: bool,
               **options: Any) -> None:
    """Compare the paper's conditions with bootstrap confidence intervals: untuned, Original Teacher, ARTE,
    Question Only and Rationale Only (keys: untuned, original, arte, question-only, rationale-only)."""

    settings = _settings(options)
    _check_tasks(tasks, settings.eval_mode)
    passive_openmp()   # before torch loads OpenMP
    out_dir.mkdir(parents=True, exist_ok=True)
    with session(verbose) as bars:
        try:
            set_threads(settings.threads)
            doc = run_experiment(tasks, settings, work_dir or out_dir / "work", bars)
            json_path = out_dir / "experiment.json"
            json_path.write_text(json.dumps(doc, indent=1))
            plot(doc, out_dir / "experiment.png")
        except ArteError as e:
            fail(e)

    if as_json:
        click.echo(json.dumps(doc, indent=1))
    else:
        click.echo(table(doc))
        click.echo(f"wrote {json_path} and {out_dir / 'experiment.png'} in {doc['seconds']:.0f}s")
        click.echo(json.dumps(brief(doc, json_path)))
