"""What ``arte experiment`` reports: accuracies and paired differences with bootstrap intervals, the result
document, the human table and the plot.

Contract: a task's ``runs`` are ``{"condition", "seed", "shots", "outcomes", "answers"}`` records, one per
evaluated (condition, training seed, shot count), ``outcomes`` in the order of the task's ``holdout_ids``
(1 correct, 0 wrong); ``seed`` is None for the untuned student, evaluated once. Everything else in the
document is computed from them by :func:`summarize` (:func:`arte.stats.bootstrap_ci`), so anyone holding
the JSON can recompute (and re-bootstrap) the numbers; :func:`check_document` verifies that.

Document (``format`` = ``arte-experiment/1``)::

    {"format", "created", "settings": {...}, "models": {"teacher", "student", "eval_backend"},
     "seed_varies": str, "bootstrap": {"n_boot", "level", "seed", "method"},
     "tasks": [{"task", "source", "sha256", "kind", "eval_mode", "outcome": "compared", "chance",
                "holdout_ids", "demo_ids",
                "data": {"kept", "fit", "used", "dropped_too_long", "truncated", "identical", "note"},
                "pipeline": {stage: summary}, "runs": [...],
                "accuracy": [{"condition", "shots", **interval}],
                "differences": [{"a", "b", "shots", **interval}],
                "seconds": {...}, "compute_seconds": {...}, "cached": [...]}],
     "seconds": float}

A task that could not be compared has ``outcome`` ``no_signal`` (its drafts gave no preference pair; with
the pipeline's ``signal``: score spread, the drafts' answers, items, what was skipped) or ``no_data`` (no
training example left; with the ``data`` counts), a ``reason``, its ``pipeline`` and no ``runs``; the table,
the machine line and the plot say so and show the other tasks. (Documents written before ``outcome``
existed are all ``compared``.)

``seconds`` is what each part took in this invocation (near 0 for cached steps); ``compute_seconds`` what
its steps took when they ran, cached or not (model loading excluded).

The plot (``experiment.png``) has one column per task: on top, accuracy per shot count and condition with
the interval as error bars (and chance level dashed); below, the paired difference ARTE − original teacher
with its interval around a zero line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from arte.errors import ConfigError
from arte.pairs import NO_SIGNAL
from arte.stats import bootstrap_ci

__all__ = ["FORMAT", "CONDITIONS", "COMPARISONS", "TASK_OUTCOMES", "COMPARED", "NO_SIGNAL", "NO_DATA", "summarize",
           "check_document", "table", "plot", "brief"]

FORMAT = "arte-experiment/1"
COMPARED, NO_DATA = "compared", "no_data"
TASK_OUTCOMES = (COMPARED, NO_SIGNAL, NO_DATA)   # a task's outcome in the document
CONDITIONS = ("untuned", "original", "arte")
COMPARISONS = (("arte", "original"), ("arte", "untuned"), ("original", "untuned"))
COLORS = {"untuned": "#9e9e9e", "original": "#4c78a8", "arte": "#f58518"}


def outcome_matrix(runs: Sequence[Mapping[str, Any]], condition: str, shots: int) -> np.ndarray:
    """Outcomes of ``condition`` at ``shots`` as a seeds × items matrix (rows ordered by seed)."""
    rows = sorted((r for r in runs if r["condition"] == condition and r["shots"] == shots),
                  key=lambda r: -1 if r["seed"] is None else r["seed"])
    if not rows:
        raise ConfigError("runs", f"no runs of condition {condition!r} at {shots} shots")
    return np.asarray([r["outcomes"] for r in rows], dtype=float)


def summarize(runs: Sequence[Mapping[str, Any]], shots: Sequence[int], *, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Accuracy of each condition and the paired differences of :data:`COMPARISONS`, per shot count, each
    with its two-level bootstrap interval (the same ``seed`` for every interval, so reruns agree)."""
    accuracy, differences = [], []
    for k in shots:
        m = {c: outcome_matrix(runs, c, k) for c in CONDITIONS}
        for c in CONDITIONS:
            accuracy.append({"condition": c, "shots": k,
                             **bootstrap_ci(m[c], n_boot=n_boot, level=level, seed=seed).to_dict()})
        for a, b in COMPARISONS:
            differences.append({"a": a, "b": b, "shots": k,
                                **bootstrap_ci(m[a], m[b], n_boot=n_boot, level=level, seed=seed).to_dict()})
    return {"accuracy": accuracy, "differences": differences}


def check_document(doc: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` (naming the field) unless ``doc`` is a well-formed result document whose
    intervals are what :func:`summarize` computes from its runs."""
    if doc.get("format") != FORMAT:
        raise ConfigError("format", f"expected {FORMAT!r}, got {doc.get('format')!r}")
    for key in ("settings", "models", "seed_varies", "bootstrap", "tasks", "seconds"):
        if key not in doc:
            raise ConfigError(key, "missing")
    b = doc["bootstrap"]
    for i, t in enumerate(doc["tasks"]):
        where = f"tasks[{i}]"
        outcome = t.get("outcome", COMPARED)
        if outcome not in TASK_OUTCOMES:
            raise ConfigError(f"{where}.outcome", f"must be one of {', '.join(TASK_OUTCOMES)}, got {outcome!r}")
        if outcome != COMPARED:
            numbers = "signal" if outcome == NO_SIGNAL else "data"
            for key in ("task", "reason", "pipeline", numbers):
                if not t.get(key):
                    raise ConfigError(f"{where}.{key}", f"missing (a task with outcome {outcome})")
            if t.get("runs"):
                raise ConfigError(f"{where}.runs", f"a task with outcome {outcome} has no runs")
            continue
        for key in ("task", "holdout_ids", "demo_ids", "data", "runs", "accuracy", "differences", "eval_mode"):
            if key not in t:
                raise ConfigError(f"{where}.{key}", "missing")
        n = len(t["holdout_ids"])
        for j, r in enumerate(t["runs"]):
            if r["condition"] not in CONDITIONS:
                raise ConfigError(f"{where}.runs[{j}].condition", f"unknown condition {r['condition']!r}")
            if len(r["outcomes"]) != n or any(o not in (0, 1) for o in r["outcomes"]):
                raise ConfigError(f"{where}.runs[{j}].outcomes", f"expected {n} outcomes of 0 or 1")
            if (r["seed"] is None) != (r["condition"] == "untuned"):
                raise ConfigError(f"{where}.runs[{j}].seed", "the untuned student has no seed, the others one")
        shots = sorted({r["shots"] for r in t["runs"]})
        again = summarize(t["runs"], shots, n_boot=b["n_boot"], level=b["level"], seed=b["seed"])
        for key in ("accuracy", "differences"):
            if again[key] != t[key]:
                raise ConfigError(f"{where}.{key}", "does not match the intervals recomputed from the runs")


def _compared(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in doc["tasks"] if t.get("outcome", COMPARED) == COMPARED]


def _fmt(iv: Mapping[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(iv['estimate'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"


def table(doc: Mapping[str, Any]) -> str:
    """The human table: per task and shot count, each condition's accuracy and ARTE − original, with
    intervals, then each task's data sizes."""
    level = round(100 * doc["bootstrap"]["level"])
    head = (f"{'task':24} {'shots':>5}  " + "  ".join(f"{c:24}" for c in CONDITIONS) + "  arte - original")
    lines = [f"accuracy on the holdout, mean [{level}% CI] over items x {doc['settings']['seeds']} seeds", head,
             "-" * len(head)]
    for t in _compared(doc):
        acc = {(a["condition"], a["shots"]): a for a in t["accuracy"]}
        diff = {(d["a"], d["b"], d["shots"]): d for d in t["differences"]}
        for k in sorted({a["shots"] for a in t["accuracy"]}):
            cells = "  ".join(f"{_fmt(acc[c, k]):24}" for c in CONDITIONS)
            lines.append(f"{t['task'][:24]:24} {k:>5}  {cells}  {_fmt(diff['arte', 'original', k], True)}")
    lines.append("")
    for t in doc["tasks"]:
        if t.get("outcome", COMPARED) != COMPARED:
            lines.append(f"{t['task']}: {t['outcome'].replace('_', ' ')}, not compared: {t['reason']}")
            continue
        d = t["data"]
        lines.append(f"{t['task']}: {len(t['holdout_ids'])} holdout items ({t['eval_mode']}), chance "
                     f"{t['chance']:.3f}; training examples kept {d['kept']}, used {d['used']} per condition "
                     f"({d['identical']} identical in both)")
    return "\n".join(lines)


def brief(doc: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The one-line machine summary: where the document is, and every interval, compactly."""
    def iv(x: Mapping[str, Any]) -> list[float]:
        return [round(x["estimate"], 4), round(x["low"], 4), round(x["high"], 4)]

    def task(t: Mapping[str, Any]) -> dict[str, Any]:
        if t.get("outcome", COMPARED) != COMPARED:
            return {"outcome": t["outcome"], "reason": t["reason"]}
        return {"outcome": COMPARED,
                "accuracy": {f"{a['condition']}@{a['shots']}": iv(a) for a in t["accuracy"]},
                "arte-original": {str(d["shots"]): iv(d) for d in t["differences"]
                                  if (d["a"], d["b"]) == ("arte", "original")},
                "train_size": t["data"]["used"]}

    return {"format": FORMAT, "json": str(path), "seconds": doc["seconds"],
            "tasks": {t["task"]: task(t) for t in doc["tasks"]}}


def plot(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write the figure described in the module docstring (matplotlib, Agg) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _compared(doc)
    out = Path(path)
    if not tasks:   # every task without signal or data: say so instead of an empty grid
        fig, ax = plt.subplots(figsize=(6, 2.4))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "\n".join(f"{t['task']}: {t['outcome'].replace('_', ' ')}, not compared"
                                     for t in doc["tasks"]) or "no tasks", ha="center", va="center")
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks) + 0.6, 6.4), squeeze=False,
                             gridspec_kw={"height_ratios": [2.2, 1]})
    width = 0.8 / len(CONDITIONS)
    for col, t in enumerate(tasks):
        top, bottom = axes[0, col], axes[1, col]
        shots = sorted({a["shots"] for a in t["accuracy"]})
        x = np.arange(len(shots))
        for i, c in enumerate(CONDITIONS):
            rows = [next(a for a in t["accuracy"] if a["condition"] == c and a["shots"] == k) for k in shots]
            est = np.array([r["estimate"] for r in rows])
            err = np.array([[r["estimate"] - r["low"] for r in rows], [r["high"] - r["estimate"] for r in rows]])
            top.bar(x + (i - 1) * width, est, width, yerr=err, capsize=3, color=COLORS[c], label=c)
        top.axhline(t["chance"], color="k", linestyle="--", linewidth=0.8, label="chance")
        top.set_xticks(x, [f"{k}-shot" for k in shots])
        top.set_ylim(0, 1)
        top.set_title(f"{t['task']}\n{len(t['holdout_ids'])} items, {doc['settings']['seeds']} seeds, "
                      f"{t['data']['used']} train ex.", fontsize=9)
        if col == 0:
            top.set_ylabel(f"accuracy ({round(100 * doc['bootstrap']['level'])}% CI)")
            top.legend(fontsize=7, loc="upper right", ncol=2)
        diffs = [next(d for d in t["differences"] if (d["a"], d["b"], d["shots"]) == ("arte", "original", k))
                 for k in shots]
        est = np.array([d["estimate"] for d in diffs])
        err = np.array([[d["estimate"] - d["low"] for d in diffs], [d["high"] - d["estimate"] for d in diffs]])
        bottom.errorbar(x, est, yerr=err, fmt="o", capsize=4, color=COLORS["arte"])
        bottom.axhline(0.0, color="k", linewidth=0.8)
        bottom.set_xticks(x, [f"{k}-shot" for k in shots])
        bottom.set_xlim(-0.6, len(shots) - 0.4)
        if col == 0:
            bottom.set_ylabel("arte − original")
    skipped = [t["task"] for t in doc["tasks"] if t.get("outcome", COMPARED) != COMPARED]
    if skipped:
        fig.suptitle(f"not compared (no signal or no data): {', '.join(skipped)}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
