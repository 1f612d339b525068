"""The teacher side of ``arte``: ``draft``, ``score``, ``pairs``, ``align``, ``tailor`` and ``pipeline``.

Each command works on files, shows tqdm progress on stderr and, with ``--json``, prints exactly one JSON
document on stdout (anything a library might print goes to stderr meanwhile). Exit codes are those of
:mod:`arte_cli.cli`. The commands are registered on the ``arte`` group in ``arte_cli/cli.py``.

The task is split the same way by every command (``--split-seed``, ``--n-seeds``, ``--validation``):
seed examples prompt the teacher, validation items score drafts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import click

from arte.backends import BACKENDS, LOCAL_BACKENDS, TORCH_DTYPES, open_student, open_teacher
from arte.backends.openai import STRUCTURED_OUTPUTS
from arte.dpo import AlignConfig
from arte.dpo import align as run_align
from arte.drafts import read_drafts, write_drafts
from arte.elicit import ElicitConfig, elicit_drafts
from arte.errors import ArteError
from arte.home import convert_dir, model_dir
from arte.models import resolve_model
from arte.pair_rules import COMPARISONS
from arte.pairs import PairConfig, pair_counts, read_pairs, score_table, select_pairs, write_pairs
from arte.pipeline import Pipeline, PipelineConfig, read_score_estimates, write_scores
from arte.scoring import DEFAULT_MODE, MODE_HELP, MODES, ScoringConfig, score_drafts
from arte.tailor import TailorConfig, tailor_dataset
from arte.tasks import label_counts, load_task, split_task
from arte_cli.output import emit, fail, session, set_threads

__all__ = ["COMMANDS"]

API_KEY_ENV = "ARTE_TEACHER_API_KEY"


# ---- shared options --------------------------------------------------------------------------------

def _task_options(f: Callable) -> Callable:
    f = click.option("--validation", "n_validation", default=20, show_default=True, type=click.IntRange(min=1),
                     help="Validation items the student scores drafts on.")(f)
    f = click.option("--n-seeds", default=6, show_default=True, type=click.IntRange(min=1),
                     help="Seed examples set aside for the teacher (label-stratified): each question prompt "
                          "shows --seeds-per-prompt of them, rotating. Part of the split: use the same value "
                          "in every command of one run.")(f)
    f = click.option("--split-seed", default=0, show_default=True, help="Seed of the task split.")(f)
    f = click.option("--task", "task_path", required=True, type=click.Path(path_type=Path),
                     help="BIG-bench task.json or JSONL file.")(f)
    return f


def _teacher_options(f: Callable) -> Callable:
    f = click.option("--endpoint-timeout", default=120.0, show_default=True, type=click.FloatRange(min=0.1),
                     help="Seconds per request to --endpoint.")(f)
    f = click.option("--endpoint-retries", default=4, show_default=True, type=click.IntRange(min=0),
                     help="Retries (exponential backoff) of failed requests to --endpoint.")(f)
    f = click.option("--endpoint-model", default=None,
                     help=f"Served model name at --endpoint (API key from ${API_KEY_ENV}).")(f)
    f = click.option("--endpoint", default=None,
                     help="An OpenAI-compatible server (vLLM, llama-server) to use as the teacher.")(f)
    f = click.option("--teacher-dtype", type=click.Choice(TORCH_DTYPES), default="auto", show_default=True,
                     help="Weights' dtype of a torch teacher (auto: bf16 on a GPU, fp32 on the CPU).")(f)
    f = click.option("--teacher-device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="Device of a torch teacher (auto: CUDA when available).")(f)
    f = click.option("--teacher-gpu-layers", default=0, show_default=True, type=click.IntRange(min=-1),
                     help="Layers of a llama.cpp teacher offloaded to the GPU (-1: all; needs a CUDA build).")(f)
    f = click.option("--teacher-backend", type=click.Choice(LOCAL_BACKENDS), default="llama",
                     show_default=True, help="Runtime of a local teacher (with --adapter: torch).")(f)
    f = click.option("--teacher", default="default", show_default=True,
                     help="Teacher model: 'default', a .gguf file or an HF directory.")(f)
    return f


def _elicit_options(f: Callable) -> Callable:
    """How drafts are elicited: questions, rationale styles, reply budgets."""
    f = click.option("--rationale-tokens", default=256, show_default=True, type=click.IntRange(min=1),
                     help="Reply budget per rationale.")(f)
    f = click.option("--question-tokens", default=512, show_default=True, type=click.IntRange(min=1),
                     help="Reply budget per question prompt.")(f)
    f = click.option("--max-question-prompts", type=click.IntRange(min=1), default=None,
                     help="Give up after this many question prompts (default: 4 x the prompts needed).")(f)
    f = click.option("--styles", default="expert,rules,plain,eliminate", show_default=True,
                     help="Rationale styles, comma-separated (K rationales per question).")(f)
    return click.option("--n-questions", default=250, show_default=True, type=click.IntRange(min=1),
                        help="Draft questions to elicit (the paper: 250 per task).")(f)


def _seeds_per_prompt_option(f: Callable) -> Callable:
    return click.option("--seeds-per-prompt", default=3, show_default=True, type=click.IntRange(min=1),
                        help="Seed examples shown per question prompt (the paper: 3), stratified by label and "
                             "rotated over the --n-seeds set aside.")(f)


def _draft_format_options(f: Callable) -> Callable:
    """Options of the commands that elicit questions and rationales (``draft``, ``tailor``)."""

    f = click.option("--endpoint-structured-output", type=click.Choice(STRUCTURED_OUTPUTS),
                     default=STRUCTURED_OUTPUTS[0], show_default=True,
                     help="How --endpoint is told the draft format: vLLM structured_outputs regex (vllm), "
                          "vLLM < 0.12 guided_regex (vllm-guided), a GBNF grammar (llama-server), or not "
                          "at all (none).")(f)
    f = _seeds_per_prompt_option(f)
    f = click.option("--constrain/--no-constrain", default=True, show_default=True,
                     help="Decode the teacher inside the draft format (questions with the task's options "
                          "line, rationales ending in <ans>one of the options</ans>).")(f)
    return f


def _common(f: Callable) -> Callable:
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(f)
    f = click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for the models (default: the runtime's choice).")(f)
    return f


def _split(task_path: Path, split_seed: int, n_seeds: int, n_validation: int) -> tuple[Any, Any]:
    task = load_task(task_path)
    return task, split_task(task, seed=split_seed, n_seeds=n_seeds, validation=n_validation)


def _teacher_opener(teacher: str, backend: str, endpoint: str | None, endpoint_model: str | None,
                    threads: int | None, *, endpoint_retries: int = 4, endpoint_timeout: float = 120.0,
                    structured_output: str = "vllm", device: str = "auto", dtype: str = "auto",
                    n_gpu_layers: int = 0) -> tuple[Callable[[Path | None], Any], str]:
    """A function that opens the teacher (bare, or with a local PEFT adapter dir) and an identity string
    (:func:`arte.backends.open_teacher`)."""

    if endpoint:
        if not endpoint_model:
            raise click.UsageError("--endpoint needs --endpoint-model")

        def open_remote(adapter: Path | None) -> Any:
            if adapter is not None:
                raise click.UsageError("a local adapter cannot be applied to a remote --endpoint teacher; serve "
                                       "it there (e.g. vLLM --lora-modules) and pass its name as --endpoint-model")
            return open_teacher(None, "openai", endpoint=endpoint, endpoint_model=endpoint_model,
                                api_key=os.environ.get(API_KEY_ENV), max_retries=endpoint_retries,
                                timeout=endpoint_timeout, structured_output=structured_output)

        return open_remote, f"openai:{endpoint}:{endpoint_model}"
    ref = resolve_model(teacher, model_dir())

    def open_local(adapter: Path | None) -> Any:
        # --teacher-backend llama means llama.cpp where it can run the teacher: a PEFT adapter (from
        # `arte align`) or an HF directory go to torch ("auto"), as they always did.
        return open_teacher(ref, "torch" if backend == "torch" else "auto", adapter=adapter, n_threads=threads,
                            n_gpu_layers=n_gpu_layers, device=device, dtype=dtype, convert_dir=convert_dir())

    return open_local, f"{backend}:{ref.name}:{ref.sha256 or ref.path}"


def _student_opener(student: str, backend: str, threads: int | None) -> tuple[Callable[[], Any], str]:
    ref = resolve_model(student, model_dir())
    return (lambda: open_student(ref, backend, n_threads=threads, convert_dir=convert_dir()),
            f"{backend}:{ref.name}:{ref.sha256 or ref.path}")


def parse_styles(value: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in value.split(",") if s.strip())


# ---- commands --------------------------------------------------------------------------------------

@click.command()
@_task_options
@_teacher_options
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Drafts JSONL to write.")
@_elicit_options
@click.option("--rationale-temperature", default=0.0, show_default=True, type=click.FloatRange(0.0, 10.0),
              help="Sampling temperature of rationales.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@_draft_format_options
@_common
def draft(task_path: Path, split_seed: int, n_seeds: int, n_validation: int, teacher: str, teacher_backend: str,
          teacher_gpu_layers: int, teacher_device: str, teacher_dtype: str,
          endpoint: str | None, endpoint_model: str | None, endpoint_retries: int, endpoint_timeout: float,
          out_path: Path, n_questions: int, styles: str,
          max_question_prompts: int | None, question_tokens: int, rationale_tokens: int,
          rationale_temperature: float, seed: int, constrain: bool, seeds_per_prompt: int,
          endpoint_structured_output: str, threads: int | None, verbose: bool, as_json: bool) -> None:
    """Elicit draft questions and rationales from the teacher (writes drafts JSONL)."""

    with session(verbose) as bars:
        try:
            cfg = ElicitConfig(n_questions=n_questions, styles=parse_styles(styles), seed=seed,
                               max_question_prompts=max_question_prompts, question_max_new_tokens=question_tokens,
                               rationale_max_new_tokens=rationale_tokens,
                               rationale_temperature=rationale_temperature, n_seeds=seeds_per_prompt,
                               constrain=constrain)
            task, split = _split(task_path, split_seed, n_seeds, n_validation)
            opener, _ = _teacher_opener(teacher, teacher_backend, endpoint, endpoint_model, threads,
                                        endpoint_retries=endpoint_retries, endpoint_timeout=endpoint_timeout,
                                        structured_output=endpoint_structured_output, device=teacher_device,
                                        dtype=teacher_dtype, n_gpu_layers=teacher_gpu_layers)
            t = opener(None)
            try:
                res = elicit_drafts(t, task, split.seeds, cfg, bars)
            finally:
                t.close()
            write_drafts(out_path, res.drafts)
        except ArteError as e:
            fail(e)

    data = {"task": task.name, "out": str(out_path), **res.summary(), "labels": label_counts(res.drafts)}
    emit(data, as_json, f"{len(res.drafts)} drafts for {len(res.questions)} questions -> {out_path}\n"
                         f"question prompts with drafts: {data['question_prompts_with_drafts']}/"
                         f"{data['question_prompts']}\n"
                         f"question rejections: {res.question_rejections}\n"
                         f"draft rejections: {res.draft_rejections}\nrepairs: {res.repairs}\n"
                         f"constraint: {data['constraint']}")


@click.command()
@_task_options
@click.option("--drafts", "drafts_path", required=True, type=click.Path(path_type=Path), help="Drafts JSONL.")
@click.option("--student", default="default", show_default=True,
              help="Student model: 'default', a .gguf file or an HF directory.")
@click.option("--backend", type=click.Choice(BACKENDS), default="llama", show_default=True,
              help="Student runtime.")
@click.option("--mode", type=click.Choice(MODES), default=DEFAULT_MODE, show_default=True, help=MODE_HELP)
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Scores JSON to write.")
@_common
def score(task_path: Path, split_seed: int, n_seeds: int, n_validation: int, drafts_path: Path, student: str,
          backend: str, mode: str, out_path: Path, threads: int | None, verbose: bool, as_json: bool) -> None:
    """Score drafts with a local student on the validation items (writes scores JSON)."""

    with session(verbose) as bars:
        try:
            cfg = ScoringConfig(mode=mode)
            task, split = _split(task_path, split_seed, n_seeds, n_validation)
            drafts = read_drafts(drafts_path)
            opener, _ = _student_opener(student, backend, threads)
            s = opener()
            total, done = len(drafts) * len(split.validation), [0]

            def tick(n: int) -> None:
                done[0] += n
                bars("score", done[0], total)

            try:
                res = score_drafts(s, task, drafts, split.validation, cfg, progress=tick)
            finally:
                s.close()
            scores = {x.draft_id: (float(x.n_items), float(x.n_correct)) for x in res.scores}
            write_scores(out_path, task.name, mode, len(split.validation), scores, res.stats,
                         outcomes={x.draft_id: list(row) for x, row in zip(res.scores, res.outcomes)},
                         item_ids=res.item_ids)
        except ArteError as e:
            fail(e)

    acc = [x.accuracy for x in res.scores]
    data = {"task": task.name, "out": str(out_path), "drafts": len(scores), "items": len(split.validation),
            "labels": label_counts(split.validation), "mode": mode, "mean_accuracy": sum(acc) / len(acc), "seconds": round(res.stats["seconds"], 3)}
    emit(data, as_json, f"scored {len(scores)} drafts on {len(split.validation)} items "
                         f"(mean accuracy {data['mean_accuracy']:.3f}) -> {out_path}")


@click.command()
@_task_options
@click.option("--drafts", "drafts_path", required=True, type=click.Path(path_type=Path), help="Drafts JSONL.")
@click.option("--scores", "scores_path", required=True, type=click.Path(path_type=Path),
              help="Scores JSON (from `arte score` or `edge-agent score --json`).")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Pairs JSONL to write.")
@click.option("--kinds", default="question,rationale", show_default=True, help="Pair kinds, comma-separated.")
@click.option("--min-items", default=1.0, show_default=True, type=float, help="Items a score needs to count.")
@click.option("--min-margin", default=0.0, show_default=True, type=float,
              help="A pair's score difference must exceed this, on top of the noise rule.")
@click.option("--confidence", default=0.9, show_default=True, type=float,
              help="Two-sided level at which chosen must beat rejected beyond noise (0: point estimates).")
@_seeds_per_prompt_option
@click.option("--comparison", type=click.Choice(COMPARISONS), default="paired", show_default=True,
              help="paired: rationales scored on the same items are compared item by item (needs the "
                   "outcomes `arte score` writes); intervals: chosen's lower bound above rejected's upper bound.")
@_common
def pairs(task_path: Path, split_seed: int, n_seeds: int, seeds_per_prompt: int, n_validation: int,
          drafts_path: Path, scores_path: Path,
          out_path: Path, kinds: str, min_items: float, min_margin: float, confidence: float, comparison: str,
          threads: int | None, verbose: bool, as_json: bool) -> None:
    """Build DPO preference pairs from drafts and their scores (writes pairs JSONL; none without signal)."""

    with session(verbose):
        try:
            cfg = PairConfig(kinds=parse_styles(kinds), min_items=min_items, min_margin=min_margin, n_seeds=seeds_per_prompt,
                             confidence=confidence, comparison=comparison)
            task, split = _split(task_path, split_seed, n_seeds, n_validation)
            drafts = read_drafts(drafts_path)
            scores = read_score_estimates(scores_path)
            res = select_pairs(task, drafts, scores, split.seeds, cfg)
            write_pairs(out_path, res.pairs)
        except ArteError as e:
            fail(e)
    data = {"task": task.name, "out": str(out_path), "pairs": len(res.pairs), **pair_counts(res.pairs),
            **score_table(drafts, scores, cfg).summary(), "selection": res.to_dict()}
    emit(data, as_json, f"{res.describe()} -> {out_path}")


def _align_options(f: Callable) -> Callable:
    opts = [
        click.option("--save-steps", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Save a resumable checkpoint every N steps (0: none; `arte align --resume` goes on)."),
        click.option("--liger", "use_liger_kernel", is_flag=True,
                     help="TRL's Liger kernels (CUDA only; the liger-kernel package)."),
        click.option("--precompute-ref-log-probs", is_flag=True,
                     help="The reference model's log-probs of every pair once before training."),
        click.option("--load-in-4bit", is_flag=True, help="QLoRA: the frozen base in 4-bit NF4 (CUDA, bitsandbytes)."),
        click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=False, show_default=True,
                     help="Recompute activations in the backward pass (memory for compute; large models)."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                     help="Training dtype (auto: bf16 on a GPU that has it, fp32 on the CPU); the base loads in it."),
        click.option("--eval-pairs", default=64, show_default=True, type=click.IntRange(min=0),
                     help="Training pairs the before/after reward is also measured on (labelled train)."),
        click.option("--holdout-share", default=0.2, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
                     help="Share of the pairs held out of training (by --align-seed) to judge it: DPO reward "
                          "accuracy and margin on them before and after."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="Training device."),
        click.option("--lora-alpha", default=16, show_default=True, type=click.IntRange(min=1),
                     help="LoRA alpha."),
        click.option("--lora-r", default=8, show_default=True, type=click.IntRange(min=1), help="LoRA rank."),
        click.option("--max-length", default=1024, show_default=True, type=click.IntRange(min=8),
                     help="Prompt + completion tokens kept per sequence."),
        click.option("--grad-accum", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Gradient accumulation steps."),
        click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
                     help="Pairs per device per step."),
        click.option("--steps", default=-1, show_default=True, type=int,
                     help="Optimizer steps (-1: use --epochs)."),
        click.option("--epochs", default=1.0, show_default=True, type=float, help="Passes over the pairs."),
        click.option("--beta", default=0.1, show_default=True, type=float, help="DPO beta."),
        click.option("--lr", default=5e-5, show_default=True, type=float, help="Peak learning rate."),
        click.option("--align-seed", default=0, show_default=True, help="Training seed."),
    ]
    for o in opts:
        f = o(f)
    return f


def _align_config(lr: float, steps: int, align_seed: int, **opts: Any) -> Any:
    """The AlignConfig of the ``_align_options`` (the other options are its fields by name)."""

    return AlignConfig(learning_rate=lr, max_steps=steps, seed=align_seed, **opts)


@click.command()
@click.option("--teacher", default="default", show_default=True,
              help="Teacher base model: 'default', a .gguf file or an HF directory.")
@click.option("--pairs", "pairs_path", required=True, type=click.Path(path_type=Path), help="Pairs JSONL.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for the PEFT adapter and arte_align.json.")
@click.option("--resume", is_flag=True, help="Go on from the newest checkpoint in OUT/trainer (see --save-steps).")
@_align_options
@_common
def align(teacher: str, pairs_path: Path, out_dir: Path, resume: bool, threads: int | None, verbose: bool,
          as_json: bool, **opts: Any) -> None:
    """Align the teacher with DPO + LoRA on preference pairs (runs under `accelerate launch` too)."""

    with session(verbose) as bars:
        try:
            cfg = _align_config(**opts)
            set_threads(threads)
            ref = resolve_model(teacher, model_dir())
            res = run_align(ref, read_pairs(pairs_path), cfg, out_dir, bars, convert_dir=convert_dir(),
                            resume=resume)
        except ArteError as e:
            fail(e)
    m = res.metadata
    data = {"adapter": str(res.adapter_dir), **{k: m[k] for k in ("steps", "warmup_steps", "train_loss",
                                                                   "losses", "reward", "reward_margin",
                                                                   "train_tokens", "seconds", "pairs")}}
    emit(data, as_json, f"adapter -> {res.adapter_dir}: {m['steps']} steps on {m['pairs']['trained']} pairs\n"
                         + "\n".join(_reward_lines(m["reward"])))


def _reward_lines(reward: dict[str, Any]) -> list[str]:
    """DPO reward accuracy and margin before -> after, per evaluated pair set (held-out first)."""
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = []
    for name, label in (("held_out", "held-out pairs"), ("train", "training pairs")):
        e = reward.get(name) or {}
        if not e.get("pairs"):
            lines.append(f"{label}: none")
            continue
        b, a = e["before"] or {}, e["after"] or {}
        lines.append(f"{label} ({e['pairs']}): reward accuracy {f(b.get('accuracy'))} -> {f(a.get('accuracy'))}, "
                     f"margin {f(b.get('margin'))} -> {f(a.get('margin'))}")
    return lines


@click.command()
@_task_options
@_teacher_options
@click.option("--adapter", type=click.Path(path_type=Path), default=None,
              help="PEFT adapter directory from `arte align` (uses the torch teacher).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for dataset.jsonl and manifest.json.")
@click.option("--n-questions", default=250, show_default=True, type=click.IntRange(min=1),
              help="Questions to write.")
@click.option("--check-samples", default=1, show_default=True, type=click.IntRange(0, 16),
              help="Extra sampled rationales that must agree with the answer.")
@click.option("--max-question-prompts", type=click.IntRange(min=1), default=None,
              help="Give up after this many question prompts (default: 4 x the prompts needed).")
@click.option("--question-tokens", default=512, show_default=True, type=click.IntRange(min=1),
              help="Reply budget per question prompt.")
@click.option("--rationale-tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="Reply budget per rationale.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@_draft_format_options
@_common
def tailor(task_path: Path, split_seed: int, n_seeds: int, n_validation: int, teacher: str, teacher_backend: str,
           teacher_gpu_layers: int, teacher_device: str, teacher_dtype: str,
           endpoint: str | None, endpoint_model: str | None, endpoint_retries: int, endpoint_timeout: float,
           adapter: Path | None, out_dir: Path, n_questions: int,
           check_samples: int, max_question_prompts: int | None, question_tokens: int, rationale_tokens: int,
           seed: int, constrain: bool, seeds_per_prompt: int, endpoint_structured_output: str,
           threads: int | None, verbose: bool, as_json: bool) -> None:
    """Write tailored training data with the (aligned) teacher: dataset.jsonl + manifest.json."""

    with session(verbose) as bars:
        try:
            cfg = TailorConfig(n_questions=n_questions, check_samples=check_samples, seed=seed,
                               n_seeds=seeds_per_prompt, max_question_prompts=max_question_prompts,
                               question_max_new_tokens=question_tokens, rationale_max_new_tokens=rationale_tokens,
                               constrain=constrain)
            task, split = _split(task_path, split_seed, n_seeds, n_validation)
            opener, _ = _teacher_opener(teacher, teacher_backend, endpoint, endpoint_model, threads,
                                        endpoint_retries=endpoint_retries, endpoint_timeout=endpoint_timeout,
                                        structured_output=endpoint_structured_output, device=teacher_device,
                                        dtype=teacher_dtype, n_gpu_layers=teacher_gpu_layers)
            t = opener(adapter)
            try:
                res = tailor_dataset(t, task, split.seeds, cfg, out_dir, bars)
            finally:
                t.close()
        except ArteError as e:
            fail(e)
    m = res.manifest
    data = {"dataset": str(res.dataset_path), "manifest": str(res.manifest_path),
            **{k: m[k] for k in ("n_examples", "sha256", "size", "counts", "labels", "teacher", "adapter")}}
    emit(data, as_json, f"{m['n_examples']} examples -> {res.dataset_path} (sha256 {m['sha256'][:12]}…)\n"
                         f"counts: {m['counts']}")


@click.command()
@_task_options
@_teacher_options
@click.option("--work", "work_dir", required=True, type=click.Path(path_type=Path),
              help="Work directory (resumable: finished stages are skipped).")
@click.option("--student", default="default", show_default=True, help="Student model.")
@click.option("--student-backend", type=click.Choice(BACKENDS), default="llama",
              show_default=True, help="Student runtime.")
@click.option("--mode", type=click.Choice(MODES), default=DEFAULT_MODE, show_default=True, help=MODE_HELP)
@_elicit_options
@click.option("--tailor-questions", default=250, show_default=True, type=click.IntRange(min=1),
              help="Questions of the tailored dataset.")
@click.option("--check-samples", default=1, show_default=True, type=click.IntRange(0, 16),
              help="Consistency samples per tailored example.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--pair-confidence", default=0.9, show_default=True, type=float,
              help="Level at which a pair's chosen must beat rejected beyond noise (0: point estimates); "
                   "without any pair the run ends as no signal.")
@click.option("--select-items", default=0, show_default=True, type=click.IntRange(min=0),
              help="Judge the drafts on the top-k validation items by IRT discrimination (2PL fit on the draft "
                   "x item matrix, label-balanced; recorded in selection.json); 0: all items.")
@click.option("--stages", default="draft,score,pairs,align,tailor", show_default=True,
              help="Stages to run, comma-separated.")
@click.option("--force", default="", help="Stages to re-run even when up to date, comma-separated.")
@_seeds_per_prompt_option
@_align_options
@_common
def pipeline(task_path: Path, split_seed: int, n_seeds: int, seeds_per_prompt: int, n_validation: int, teacher: str,
             teacher_backend: str, teacher_gpu_layers: int, teacher_device: str, teacher_dtype: str,
             endpoint: str | None, endpoint_model: str | None, endpoint_retries: int,
             endpoint_timeout: float, work_dir: Path, student: str,
             student_backend: str, mode: str, n_questions: int, styles: str, max_question_prompts: int | None,
             question_tokens: int,
             rationale_tokens: int, tailor_questions: int, check_samples: int, seed: int, pair_confidence: float,
             select_items: int, stages: str, force: str, threads: int | None, verbose: bool, as_json: bool, **align_opts: Any) -> None:
    """Run draft -> score -> pairs -> align -> tailor in a work directory, resuming finished stages."""

    with session(verbose) as bars:
        try:
            q = {"seed": seed, "n_seeds": seeds_per_prompt, "question_max_new_tokens": question_tokens,
                 "max_question_prompts": max_question_prompts}
            cfg = PipelineConfig(
                elicit=ElicitConfig(n_questions=n_questions, styles=parse_styles(styles),
                                    rationale_max_new_tokens=rationale_tokens, **q),
                scoring=ScoringConfig(mode=mode), pairs=PairConfig(n_seeds=seeds_per_prompt, confidence=pair_confidence),
                align=_align_config(**align_opts),
                tailor=TailorConfig(n_questions=tailor_questions, check_samples=check_samples,
                                    rationale_max_new_tokens=rationale_tokens, **q),
                n_seeds=n_seeds, n_validation=n_validation, split_seed=split_seed, select_items=select_items)
            if endpoint:
                raise click.UsageError("the pipeline aligns a local teacher; --endpoint works with `arte draft`")
            set_threads(threads)
            task = load_task(task_path)
            open_teacher, teacher_key = _teacher_opener(teacher, teacher_backend, None, None, threads,
                                                        device=teacher_device, dtype=teacher_dtype,
                                                        n_gpu_layers=teacher_gpu_layers)
            open_student, student_key = _student_opener(student, student_backend, threads)
            base = resolve_model(teacher, model_dir())
            runner = Pipeline(work_dir, task, cfg, teacher_model=base, open_teacher=open_teacher,
                              open_student=open_student, convert_dir=convert_dir(), progress=bars,
                              identity={"teacher": teacher_key, "student": student_key,
                                        "tailor_teacher": f"torch:{base.name}:{base.sha256 or base.path}"})
            summary = runner.run(parse_styles(stages), force=parse_styles(force))
        except ArteError as e:
            fail(e)
    lines = [f"{name:7} {'skipped' if s['skipped'] else 'ran'} {s['seconds']:>8.1f}s  "
             f"{json.dumps(s['summary'], default=str)[:160]}" for name, s in summary["stages"].items()]
    if summary.get("reason"):   # no signal: the later stages stopped
        lines.append(summary["reason"])
    emit(summary, as_json, "\n".join(lines + [f"total {summary['seconds']:.1f}s in {work_dir}"]))


COMMANDS = [draft, score, pairs, align, tailor, pipeline]
