"""What ``arte experiment`` reports: accuracies and paired differences with bootstrap intervals, the result
document, the human table and the plot.

Contract: a task's ``runs`` are ``{"condition", "teacher_seed", "seed", "shots", "outcomes", "answers"}``
records, one per evaluated (condition, teacher seed, training seed, shot count), ``outcomes`` in the order
of the task's ``holdout_ids`` (1 correct, 0 wrong); ``teacher_seed`` and ``seed`` are None for the untuned
student, evaluated once. Everything else in the document is computed from them by :func:`summarize`
(:func:`arte.stats.bootstrap_ci`, with the teacher seed as the group of each run), so anyone holding the
JSON can recompute (and re-bootstrap) the numbers; :func:`check_document` verifies that.

Conditions (:data:`CONDITIONS`, the paper's names in :data:`LABELS`): ``untuned``, ``original`` (Original
Teacher), ``arte`` (ARTE), ``question-only`` (Question Only), ``rationale-only`` (Rationale Only).

Document (``format`` = ``arte-experiment/2``)::

    {"format", "created", "settings": {..., "conditions", "teacher_seeds"},
     "models": {"teacher", "student", "eval_backend"}, "seed_varies": str,
     "bootstrap": {"n_boot", "level", "seed", "method"},
     "tasks": [{"task", "source", "sha256", "kind", "eval_mode", "outcome", "chance",
                "holdout_ids", "demo_ids", "teacher_seeds": [int],
                "conditions": {condition: {"outcome": "compared" | "no_signal", "reason"?,
                               "teacher_seeds": {ts: {"outcome", "pairs", "trained_on", "reward",
                                                      "reward_margin" | "selection", "reason"?}}}},
                "data": {"kept", "fit", "used", "dropped_too_long", "truncated", "note"},
                "pipelines": {ts: {pipeline: {stage: summary}}}, "runs": [...],
                "accuracy": [{"condition", "shots", **interval}],
                "differences": [{"a", "b", "shots", **interval}],
                "seconds": {...}, "compute_seconds": {...}, "cached": [...]}],
     "seconds": float}

Each interval carries ``n_items``, ``n_seeds`` (runs) and ``n_groups`` (teacher seeds; None for untuned).
A task's ``outcome``: ``compared``; ``no_signal`` when every requested condition that needs pairs has no
signal (with ``reason`` and the pipelines' ``signal`` per teacher seed; untuned and Original Teacher runs,
when there are any, are summarized as usual); ``no_data`` when no training example is left (with the
``data`` counts, no runs). The table, the machine line and the plot say so and show the other tasks.

``seconds`` is what each part took in this invocation (near 0 for cached steps); ``compute_seconds`` what
its steps took when they ran, cached or not (model loading excluded).

The plot (``experiment.png``) has one column per task: on top, accuracy per shot count and condition with
the interval as error bars (and chance level dashed); below, the paired differences of ARTE and the
ablations against the Original Teacher (Original Teacher − untuned when neither is there) with their
intervals around a zero line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from arte.errors import ConfigError
from arte.pairs import NO_SIGNAL
from arte.stats import bootstrap_ci

__all__ = ["FORMAT", "CONDITIONS", "LABELS", "PAIR_CONDITIONS", "COMPARISONS", "TASK_OUTCOMES", "COMPARED",
           "NO_SIGNAL", "NO_DATA", "summarize", "check_document", "table", "plot", "brief"]

FORMAT = "arte-experiment/2"
COMPARED, NO_DATA = "compared", "no_data"
TASK_OUTCOMES = (COMPARED, NO_SIGNAL, NO_DATA)   # a task's outcome in the document
CONDITIONS = ("untuned", "original", "arte", "question-only", "rationale-only")
LABELS = {"untuned": "untuned", "original": "Original Teacher", "arte": "ARTE", "question-only": "Question Only",
          "rationale-only": "Rationale Only"}
PAIR_CONDITIONS = {"arte": ("question", "rationale"), "question-only": ("question",),
                   "rationale-only": ("rationale",)}   # the pair kinds each DPO condition trains on
COMPARISONS = (("arte", "original"), ("arte", "untuned"), ("original", "untuned"), ("arte", "question-only"),
               ("arte", "rationale-only"), ("question-only", "original"), ("rationale-only", "original"))
COLORS = {"untuned": "#9e9e9e", "original": "#4c78a8", "arte": "#f58518", "question-only": "#54a24b",
          "rationale-only": "#b279a2"}


def outcome_matrix(runs: Sequence[Mapping[str, Any]], condition: str, shots: int
                   ) -> tuple[np.ndarray, list[Any] | None]:
    """Outcomes of ``condition`` at ``shots`` as a runs × items matrix (rows ordered by teacher seed, then
    seed) and each row's teacher seed (None for a condition without teacher data)."""
    key = (lambda r: (-1 if r["teacher_seed"] is None else r["teacher_seed"], -1 if r["seed"] is None else r["seed"]))
    rows = sorted((r for r in runs if r["condition"] == condition and r["shots"] == shots), key=key)
    if not rows:
        raise ConfigError("runs", f"no runs of condition {condition!r} at {shots} shots")
    groups = [r["teacher_seed"] for r in rows]
    return np.asarray([r["outcomes"] for r in rows], dtype=float), (None if groups[0] is None else groups)


def summarize(runs: Sequence[Mapping[str, Any]], shots: Sequence[int], *, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Accuracy of each condition that has runs and the paired differences of :data:`COMPARISONS` between
    them, per shot count, each with its bootstrap interval over items, teacher seeds and SFT seeds (the
    same ``seed`` for every interval, so reruns agree)."""
    present = [c for c in CONDITIONS if any(r["condition"] == c for r in runs)]
    accuracy, differences = [], []
    for k in shots:
        m = {c: outcome_matrix(runs, c, k) for c in present}
        for c in present:
            accuracy.append({"condition": c, "shots": k, **bootstrap_ci(
                m[c][0], n_boot=n_boot, level=level, seed=seed, groups_a=m[c][1]).to_dict()})
        for a, b in COMPARISONS:
            if a in m and b in m:
                differences.append({"a": a, "b": b, "shots": k, **bootstrap_ci(
                    m[a][0], m[b][0], n_boot=n_boot, level=level, seed=seed, groups_a=m[a][1],
                    groups_b=m[b][1]).to_dict()})
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
        outcome = t.get("outcome")
        if outcome not in TASK_OUTCOMES:
            raise ConfigError(f"{where}.outcome", f"must be one of {', '.join(TASK_OUTCOMES)}, got {outcome!r}")
        for key in ("task", "conditions", "pipelines", "teacher_seeds", "runs"):
            if key not in t:
                raise ConfigError(f"{where}.{key}", "missing")
        if outcome != COMPARED:
            numbers = "signal" if outcome == NO_SIGNAL else "data"
            for key in ("reason", numbers):
                if not t.get(key):
                    raise ConfigError(f"{where}.{key}", f"missing (a task with outcome {outcome})")
        if outcome == NO_DATA and t["runs"]:
            raise ConfigError(f"{where}.runs", f"a task with outcome {outcome} has no runs")
        if outcome == NO_SIGNAL and any(c["outcome"] == COMPARED for name, c in t["conditions"].items()
                                        if name in PAIR_CONDITIONS):
            raise ConfigError(f"{where}.conditions", "a task without signal has no compared pair condition")
        if not t["runs"]:
            continue
        for key in ("holdout_ids", "demo_ids", "data", "accuracy", "differences", "eval_mode"):
            if key not in t:
                raise ConfigError(f"{where}.{key}", "missing")
        n = len(t["holdout_ids"])
        for j, r in enumerate(t["runs"]):
            c = r.get("condition")
            if c not in CONDITIONS:
                raise ConfigError(f"{where}.runs[{j}].condition", f"unknown condition {c!r}")
            if (t["conditions"].get(c) or {}).get("outcome") != COMPARED:
                raise ConfigError(f"{where}.runs[{j}].condition", f"{c!r} has runs but is not compared")
            if len(r["outcomes"]) != n or any(o not in (0, 1) for o in r["outcomes"]):
                raise ConfigError(f"{where}.runs[{j}].outcomes", f"expected {n} outcomes of 0 or 1")
            untuned = c == "untuned"
            if (r["seed"] is None) != untuned:
                raise ConfigError(f"{where}.runs[{j}].seed", "the untuned student has no seed, the others one")
            if (r.get("teacher_seed") is None) != untuned or (not untuned and r["teacher_seed"] not in t["teacher_seeds"]):
                raise ConfigError(f"{where}.runs[{j}].teacher_seed",
                                  f"the untuned student has no teacher seed, the others one of {t['teacher_seeds']}")
        shots = sorted({r["shots"] for r in t["runs"]})
        again = summarize(t["runs"], shots, n_boot=b["n_boot"], level=b["level"], seed=b["seed"])
        for key in ("accuracy", "differences"):
            if again[key] != t[key]:
                raise ConfigError(f"{where}.{key}", "does not match the intervals recomputed from the runs")


def _with_runs(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in doc["tasks"] if t.get("runs")]


def _fmt(iv: Mapping[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(iv['estimate'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"


def _reward(o: Mapping[str, Any]) -> str:
    rm = o.get("reward_margin") or {}
    if not rm.get("on"):
        return "reward not measured"
    acc = (f", accuracy {rm['accuracy_before']:.2f} -> {rm['accuracy_after']:.2f}"
           if rm.get("accuracy_before") is not None and rm.get("accuracy_after") is not None else "")
    return f"reward margin on {rm.get('pairs', '?')} {rm['on']} pairs {rm['before']:+.3f} -> {rm['after']:+.3f}{acc}"


def table(doc: Mapping[str, Any]) -> str:
    """The human table: per task, shot count and condition, the accuracy and the difference to the Original
    Teacher, with intervals; then per task its outcome, the conditions without signal, the pairs and the
    held-out DPO reward per teacher seed, and the training sizes."""
    level = round(100 * doc["bootstrap"]["level"])
    st = doc["settings"]
    head = f"{'task':24} {'shots':>5}  {'condition':16}  {'accuracy':24}  - Original Teacher"
    lines = [f"accuracy on the holdout, mean [{level}% CI] over items x {st.get('teacher_seeds', 1)} teacher seeds "
             f"x {st['seeds']} SFT seeds", head, "-" * (len(head) + 8)]
    for t in _with_runs(doc):
        acc = {(a["condition"], a["shots"]): a for a in t["accuracy"]}
        diff = {(d["a"], d["b"], d["shots"]): d for d in t["differences"]}
        for k in sorted({a["shots"] for a in t["accuracy"]}):
            for c in CONDITIONS:
                if (c, k) not in acc:
                    continue
                d = diff.get((c, "original", k))
                lines.append(f"{t['task'][:24]:24} {k:>5}  {LABELS[c]:16}  {_fmt(acc[c, k]):24}  "
                             f"{_fmt(d, True) if d else ''}")
    lines.append("")
    for t in doc["tasks"]:
        if t["outcome"] != COMPARED:
            ran = " (untuned and Original Teacher still compared above)" if t.get("runs") else ""
            lines.append(f"{t['task']}: {t['outcome'].replace('_', ' ')}{ran}: {t['reason']}")
        for c, rec in t.get("conditions", {}).items():
            if rec["outcome"] != COMPARED and t["outcome"] == COMPARED:
                lines.append(f"  {LABELS[c]}: {rec['outcome'].replace('_', ' ')}: {rec.get('reason', '')}")
            for ts, o in rec.get("teacher_seeds", {}).items():
                if c in PAIR_CONDITIONS and o["outcome"] == COMPARED:
                    lines.append(f"  {LABELS[c]}, teacher seed {ts}: pairs {o['pairs']}, {_reward(o)}")
                elif c == "original":
                    sel = o["selection"]
                    lines.append(f"  {LABELS[c]}, teacher seed {ts}: best of each question's rationales, "
                                 f"{sel['selected']} questions ({sel['tied_best']} with a tied best)")
        if t.get("runs"):
            d = t["data"]
            lines.append(f"  {len(t['holdout_ids'])} holdout items ({t['eval_mode']}), chance {t['chance']:.3f}; "
                         f"training examples kept {d['kept']}, used {d['used']} per condition and teacher seed")
    return "\n".join(lines)


def brief(doc: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The one-line machine summary: where the document is, and every interval, compactly."""
    def iv(x: Mapping[str, Any]) -> list[float]:
        return [round(x["estimate"], 4), round(x["low"], 4), round(x["high"], 4)]

    def task(t: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": t["outcome"],
                               "conditions": {c: v["outcome"] for c, v in t.get("conditions", {}).items()}}
        if t["outcome"] != COMPARED:
            out["reason"] = t["reason"]
        if t.get("runs"):
            out |= {"accuracy": {f"{a['condition']}@{a['shots']}": iv(a) for a in t["accuracy"]},
                    "differences": {f"{d['a']}-{d['b']}@{d['shots']}": iv(d) for d in t["differences"]},
                    "train_size": t["data"]["used"]}
        return out

    return {"format": FORMAT, "json": str(path), "seconds": doc["seconds"],
            "tasks": {t["task"]: task(t) for t in doc["tasks"]}}


def plot(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write the figure described in the module docstring (matplotlib, Agg) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _with_runs(doc)
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
    for col, t in enumerate(tasks):
        top, bottom = axes[0, col], axes[1, col]
        shots = sorted({a["shots"] for a in t["accuracy"]})
        x = np.arange(len(shots))
        present = [c for c in CONDITIONS if any(a["condition"] == c for a in t["accuracy"])]
        width = 0.8 / len(present)
        for i, c in enumerate(present):
            rows = [next(a for a in t["accuracy"] if a["condition"] == c and a["shots"] == k) for k in shots]
            est = np.array([r["estimate"] for r in rows])
            err = np.array([[r["estimate"] - r["low"] for r in rows], [r["high"] - r["estimate"] for r in rows]])
            top.bar(x + (i - (len(present) - 1) / 2) * width, est, width, yerr=err, capsize=3, color=COLORS[c],
                    label=LABELS[c])
        top.axhline(t["chance"], color="k", linestyle="--", linewidth=0.8, label="chance")
        top.set_xticks(x, [f"{k}-shot" for k in shots])
        top.set_ylim(0, 1)
        top.set_title(f"{t['task']}\n{len(t['holdout_ids'])} items, {len(t['teacher_seeds'])} teacher x "
                      f"{doc['settings']['seeds']} SFT seeds, {t['data']['used']} train ex.", fontsize=9)
        if col == 0:
            top.set_ylabel(f"accuracy ({round(100 * doc['bootstrap']['level'])}% CI)")
            top.legend(fontsize=7, loc="upper right", ncol=2)
        # the differences to the Original Teacher; with no condition beside it, Original Teacher - untuned
        versus = [(c, "original") for c in present if any((d["a"], d["b"]) == (c, "original")
                                                           for d in t["differences"])]
        if not versus and any((d["a"], d["b"]) == ("original", "untuned") for d in t["differences"]):
            versus = [("original", "untuned")]
        for i, (a, b) in enumerate(versus):
            diffs = [next(d for d in t["differences"] if (d["a"], d["b"], d["shots"]) == (a, b, k)) for k in shots]
            est = np.array([d["estimate"] for d in diffs])
            err = np.array([[d["estimate"] - d["low"] for d in diffs], [d["high"] - d["estimate"] for d in diffs]])
            bottom.errorbar(x + (i - (len(versus) - 1) / 2) * 0.15, est, yerr=err, fmt="o", capsize=4,
                            color=COLORS[a], label=f"{LABELS[a]} − {LABELS[b]}")
        if versus:
            bottom.legend(fontsize=7, loc="upper right")
        bottom.axhline(0.0, color="k", linewidth=0.8)
        bottom.set_xticks(x, [f"{k}-shot" for k in shots])
        bottom.set_xlim(-0.6, len(shots) - 0.4)
        if col == 0:
            bottom.set_ylabel("paired difference")
    skipped = [f"{t['task']} ({t['outcome'].replace('_', ' ')})" for t in doc["tasks"] if t["outcome"] != COMPARED]
    if skipped:
        fig.suptitle(f"without signal or data: {', '.join(skipped)}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
