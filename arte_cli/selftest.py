"""``arte selftest alignment``: does DPO on preference pairs move this teacher toward what they prefer?

The command runs :func:`arte.selftest.alignment_selftest` with a local teacher (the embedded model, a
GGUF file or an HF directory): drafts from the teacher (llama.cpp for a GGUF, else torch), planted
preference scores, pairs, DPO + LoRA (:func:`arte.dpo.align`), and held-out samples from the original
and the aligned teacher, both on torch (same runtime before and after). It prints a table (or one JSON
document with ``--json``), shows progress on stderr and writes a PNG of the rule rates before and after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from arte.backends import LOCAL_BACKENDS
from arte.backends.hf_teacher import TorchTeacher
from arte.backends.llama_teacher import LlamaCppTeacher
from arte.dpo import AlignConfig
from arte.dpo import align as run_align
from arte.elicit import ElicitConfig
from arte.errors import ArteError
from arte.home import convert_dir, model_dir
from arte.models import resolve_model
from arte.selftest import SelftestConfig, alignment_selftest
from arte.tasks import load_task
from arte_cli.output import emit, fail, session, set_threads

__all__ = ["selftest"]

HELP = """Check that alignment follows preferences: plant a known preference, align, measure the move.

\b
A planted "student" scores the teacher's drafts by a declared rule (e.g. rationales of at most N words;
numbered steps), the real pair selection and DPO align the teacher on those scores, and the original and
the aligned teacher answer held-out questions over several sampling seeds. The lift is the change in how
often their replies have the property, with a bootstrap interval over questions and seeds. The first rule
is also run reversed (the move must flip) and null (random scores: the interval must contain 0).

\b
PASS means: on questions it was not aligned on, DPO moved this teacher toward the drafts the pairs
preferred and away from the ones they rejected, and not by a generic drift. It does NOT show that students
learn from the aligned teacher, that real students' preferences carry this much signal, or that the lift
holds at other sizes: it checks link (1) of the loop, not link (2). Small teachers on CPU may move less
than the benchmark's targets; the numbers say how much.

Exit code 0 whatever the verdict (read `verdict` in the JSON); 3 for a bad task or config, 4 for a missing
model, 5 for a runtime failure.
"""


DEFAULT_TASK = Path(__file__).resolve().parent / "data" / "sports_understanding.json"   # shipped, as for the demo


def _csv(value: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in value.split(",") if s.strip())


def openers(ref: Any, device: str, threads: int | None, align_cfg: Any) -> tuple[Any, Any, Any, str]:
    """``(open_teacher, open_drafter, align_pairs, torch_device)`` for :func:`arte.selftest.alignment_selftest`:
    torch for the before/after samples (adapter or none), llama.cpp for drafting (a GGUF teacher; None
    otherwise), :func:`arte.dpo.align` for the pairs."""

    torch_device = device
    if device == "auto":
        import torch

        torch_device = "cuda" if torch.cuda.is_available() else "cpu"

    def open_teacher(adapter: Path | None) -> Any:
        return TorchTeacher.from_ref(ref, convert_dir=convert_dir(), device=torch_device,
                                     adapters={"aligned": str(adapter)} if adapter is not None else None)

    def open_drafter() -> Any:
        return LlamaCppTeacher(ref.path, n_threads=threads, name=ref.name)

    def align_pairs(pairs: Any, out_dir: Path, progress: Any) -> dict[str, Any]:
        return run_align(ref, pairs, align_cfg, out_dir, progress, convert_dir=convert_dir()).metadata

    return open_teacher, open_drafter if ref.kind == "gguf" else None, align_pairs, torch_device


def plot_rates(doc: dict[str, Any], path: Path) -> Path:
    """Bar chart of each variant's rule rate before and after alignment (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = doc["variants"]
    names = [v["name"] for v in vs]
    before = [v["original_rate"] for v in vs]
    after = [v["aligned_rate"] if v["aligned_rate"] is not None else float("nan") for v in vs]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(vs)), 3.4))
    x = list(range(len(vs)))
    ax.bar([i - 0.2 for i in x], before, width=0.4, label="original teacher", color="#999999")
    ax.bar([i + 0.2 for i in x], after, width=0.4, label="aligned teacher", color="#4C72B0")
    for i, v in enumerate(vs):
        lift = v.get("lift")
        if lift is not None:
            lo, hi = v["original_rate"] + lift["low"], v["original_rate"] + lift["high"]
            ax.plot([i + 0.2, i + 0.2], [lo, hi], color="black", lw=1)
        label = "no pairs" if v["outcome"] == "no_signal" else ("pass" if v["passed"] else "fail")
        ax.text(i, 1.02, label, ha="center", fontsize=8)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of held-out replies with the property")
    ax.set_title(f"Planted preferences: rule rate before and after DPO ({doc['verdict']})", fontsize=9)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def table(doc: dict[str, Any]) -> str:
    """The human table of a self-test document."""
    def pct(x: Any) -> str:
        return "   -" if x is None else f"{100 * x:4.0f}%"

    head = f"{'rule':22} {'pairs':>5} {'before':>7} {'after':>7} {'lift (95% CI), pp':>24} {'held-out acc':>12}  result"
    lines = [head, "-" * len(head)]
    for v in doc["variants"]:
        lift = v["lift"]
        ci = ("no pairs" if lift is None else
              f"{100 * lift['estimate']:+6.1f} [{100 * lift['low']:+6.1f}, {100 * lift['high']:+6.1f}]")
        acc = v["heldout_reward_accuracy"]
        res = {True: "pass", False: "FAIL", None: "no signal"}[v["passed"]]
        lines.append(f"{v['name']:22} {v['pairs']['total']:>5} {pct(v['original_rate']):>7} "
                     f"{pct(v['aligned_rate']):>7} {ci:>24} {'-' if acc is None else f'{acc:.2f}':>12}  {res}")
    th = doc["thresholds"]
    lines += ["", f"verdict: {doc['verdict'].upper()}   drafts {doc['drafts']['kept']} for "
                  f"{doc['drafts']['questions']} questions; held-out questions {len(doc['heldout'])} x "
                  f"{doc['config']['sample_seeds']} seeds; max_words {th['max_words']}, answer_chars "
                  f"{th['answer_chars']}; {doc['seconds']:.0f} s"]
    return "\n".join(lines)


@click.group()
def selftest() -> None:
    """Self-tests of the method on this machine's models."""


@selftest.command("alignment", help=HELP)
@click.option("--task", "task_path", type=click.Path(path_type=Path), default=None,
              help="BIG-bench task.json or JSONL (default: BIG-bench sports_understanding, shipped).")
@click.option("--teacher", default="default", show_default=True,
              help="Teacher model: 'default', a .gguf file or an HF directory.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where torch samples and trains (llama.cpp drafting stays on the CPU).")
@click.option("--drafter", type=click.Choice(LOCAL_BACKENDS), default="llama", show_default=True,
              help="Runtime that writes the drafts (llama needs a GGUF teacher; falls back to torch otherwise).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("selftest-alignment"), show_default=True,
              help="Drafts, scores, pairs and adapters of the run.")
@click.option("--rules", default="short,steps", show_default=True,
              help="Planted rules, comma-separated (short, steps, answer_early, quantity); the first is also "
                   "run reversed and null.")
@click.option("--strength", default=0.6, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Planted rate with the property minus without.")
@click.option("--noise", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Per-draft jitter (sd) of the planted rate.")
@click.option("--max-words", type=click.IntRange(min=1), default=None,
              help="`short`: most words of a short rationale (default: the original teacher's median).")
@click.option("--items", default=20, show_default=True, type=click.IntRange(min=1), help="Planted items per draft.")
@click.option("--questions", default=24, show_default=True, type=click.IntRange(min=1),
              help="Draft questions the teacher writes.")
@click.option("--styles", default="expert,rules,plain,eliminate", show_default=True,
              help="Rationale styles per draft question.")
@click.option("--rationale-tokens", default=128, show_default=True, type=click.IntRange(min=1),
              help="Reply budget per rationale (drafts and held-out samples).")
@click.option("--heldout", default=8, show_default=True, type=click.IntRange(min=1),
              help="Held-out questions sampled before and after.")
@click.option("--sample-seeds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Sampling seeds per held-out question.")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(0, 10),
              help="Sampling temperature of drafts' rationales and held-out replies.")
@click.option("--lr", default=2e-4, show_default=True, type=float, help="DPO peak learning rate (LoRA).")
@click.option("--epochs", default=3.0, show_default=True, type=float, help="DPO passes over the pairs.")
@click.option("--beta", default=0.1, show_default=True, type=float, help="DPO beta.")
@click.option("--max-length", default=512, show_default=True, type=click.IntRange(min=8),
              help="Prompt + completion tokens per DPO sequence.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split, the planted scores and sampling.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="PNG of the rule rates before/after (default: WORK_DIR/selftest-alignment.png).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the models.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def alignment(task_path: Path | None, teacher: str, device: str, drafter: str, work_dir: Path, rules: str,
              strength: float, noise: float, max_words: int | None, items: int, questions: int, styles: str,
              rationale_tokens: int, heldout: int, sample_seeds: int, temperature: float, lr: float, epochs: float,
              beta: float, max_length: int, seed: int, plot_path: Path | None, threads: int | None, verbose: bool,
              as_json: bool) -> None:

    with session(verbose) as bars:
        try:
            cfg = SelftestConfig(
                rules=_csv(rules), strength=strength, noise=noise, max_words=max_words, n_items=items,
                n_heldout=heldout, sample_seeds=sample_seeds, sample_temperature=temperature,
                sample_max_new_tokens=rationale_tokens, split_seed=seed, score_seed=seed,
                elicit=ElicitConfig(n_questions=questions, styles=_csv(styles),
                                    rationale_max_new_tokens=rationale_tokens,
                                    rationale_temperature=temperature, seed=seed))
            align_cfg = AlignConfig(learning_rate=lr, epochs=epochs, beta=beta, max_length=max_length, device=device,
                                    seed=seed)
            task = load_task(task_path or DEFAULT_TASK)
            set_threads(threads)
            ref = resolve_model(teacher, model_dir())
            open_teacher, open_drafter, align_pairs, torch_device = openers(ref, device, threads, align_cfg)
            res = alignment_selftest(task, cfg, work_dir, open_teacher=open_teacher, align_pairs=align_pairs,
                                     open_drafter=open_drafter if drafter == "llama" else None,
                                     progress=bars)
            doc = {**res.to_dict(), "task": task.name, "teacher": {"name": ref.name, "sha256": ref.sha256},
                   "align_config": {"learning_rate": lr, "epochs": epochs, "beta": beta, "max_length": max_length},
                   "device": torch_device, "work_dir": str(work_dir)}
            doc["plot"] = str(plot_rates(doc, plot_path or work_dir / "selftest-alignment.png"))
            (work_dir / "selftest-alignment.json").write_text(json.dumps(doc, indent=1, default=str))
        except ArteError as e:
            fail(e)
    emit(doc, as_json, table(doc) + f"\nplot: {doc['plot']}")
