"""The demo's outputs: the summary table it prints and ``report.html`` (self-contained: the drafts' score
distribution, the DPO loss and reward margin per step, before/after accuracy per device, the run's JSON).

Contract: :func:`render_summary` and :func:`write_report` read the run document :func:`arte_cli.demo.run_demo`
returns; nothing here runs a model or a process.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from arte.pairs import NO_SIGNAL
from arte_cli.demo_campaign import campaign_lines

__all__ = ["no_signal", "render_summary", "write_report"]


def no_signal(align: dict[str, Any]) -> bool:
    """Whether the align job ended without a preference pair (the teacher stayed unaligned)."""

    return align.get("outcome") == NO_SIGNAL


def _num(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


def _acc(d: dict[str, Any] | None, key: str) -> str:
    return f"{d[key]:.3f}" if d and d.get(key) is not None else "-"


def _pairs_on(margin: dict[str, Any]) -> str:
    """Which pairs the headline reward margin was measured on (arte.dpo's ``reward_margin["on"]``)."""
    return {"held_out": f"{margin.get('pairs')} held-out pairs",
            "train": f"{margin.get('pairs')} training pairs"}.get(margin.get("on") or "", "pairs")


def render_summary(doc: dict[str, Any]) -> str:
    """The human summary table."""
    agg = doc.get("aggregate") or {}
    scores = [x["score"] for x in (agg.get("drafts") or {}).values() if x.get("score") is not None]
    al = doc.get("align") or {}
    margin = {k: _num(v) for k, v in (al.get("reward_margin") or {}).items()}
    ds = doc.get("dataset") or {}
    lines = [f"ARTE demo on {doc['task']} ({doc['mode']} scoring), {len(doc.get('devices', []))} devices",
             f"  round {doc.get('round', {}).get('round_id')}: {doc.get('round', {}).get('n_drafts')} drafts; "
             f"{agg.get('n_devices', 0)} devices reported; pooled draft accuracy "
             + (f"mean {sum(scores) / len(scores):.3f}, min {min(scores):.3f}, max {max(scores):.3f}" if scores
                else "-"),
             (f"  DPO: {al.get('n_pairs', '-')} pairs, {al.get('steps', '-')} steps, reward margin on the "
              f"{_pairs_on(margin)} {margin.get('before', '-')} -> {margin.get('after', '-')}, accuracy "
              f"{margin.get('accuracy_before', '-')} -> {margin.get('accuracy_after', '-')}" if not no_signal(al)
              else f"  DPO: not run, {al.get('reason')}; the tailored data come from the unaligned teacher"),
             f"  tailored dataset {ds.get('dataset_id', '-')}: {ds.get('n_examples', '-')} examples", "",
             f"  {'device':<16}{'0-shot before':>14}{'0-shot after':>14}{'3-shot before':>15}{'3-shot after':>14}"
             f"{'kept':>6}"]
    for m in doc.get("metrics", []):
        lines.append(f"  {m['device']:<16}{_acc(m['before'], 'zero_shot'):>14}{_acc(m['after'], 'zero_shot'):>14}"
                     f"{_acc(m['before'], 'three_shot'):>15}{_acc(m['after'], 'three_shot'):>14}"
                     f"{'yes' if m['kept'] else 'no':>6}")
    for t in doc.get("training", []):
        if t.get("step") != "trained":
            lines.append(f"  {t['device']}: {t.get('step')} {t.get('error') or t.get('paused') or ''}")
    if doc.get("campaign"):
        lines += ["", *campaign_lines(doc["campaign"]), "  (the lines above the table describe its last round)"]
    s = doc.get("seconds", {})
    lines += ["", "  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in s.items())]
    if doc.get("report"):
        lines.append(f"  report: {doc['report']}")
    return "\n".join(lines)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figures(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: list[tuple[str, str, str]] = []
    drafts = (doc.get("aggregate") or {}).get("drafts") or {}
    scores = [x["score"] for x in drafts.values() if x.get("score") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(scores, bins=[i / 10 for i in range(11)], color="#4C72B0", edgecolor="white")
    ax.set_xlabel("pooled one-shot accuracy of the student on the draft")
    ax.set_ylabel("drafts")
    ax.set_title("Score distribution of the teacher's drafts")
    figs.append(("scores", "Draft scores", _png(fig)))
    plt.close(fig)

    al = doc.get("align") or {}
    losses = al.get("losses") or []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if losses:
        steps = [x["step"] for x in losses]
        ax.plot(steps, [x.get("margin") for x in losses], marker="o", color="#4C72B0")
        ax.set_ylabel("reward margin (chosen - rejected)", color="#4C72B0", fontsize=8)
        ax.set_xlabel("optimizer step")
        loss_ax = ax.twinx()
        loss_ax.plot(steps, [x["loss"] for x in losses], marker="s", color="#DD8452")
        loss_ax.set_ylabel("DPO loss", color="#DD8452", fontsize=8)
    m = {k: _num(v) for k, v in (al.get("reward_margin") or {}).items()}
    if no_signal(al):
        ax.text(0.5, 0.5, "no signal: the scores separate no preference pair\nbeyond noise; DPO did not run",
                ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_axis_off()
    ax.set_title(f"DPO on the teacher: reward margin on the {_pairs_on(m)} {m.get('before')} -> {m.get('after')}"
                 if not no_signal(al) else "DPO on the teacher: no signal", fontsize=9)
    figs.append(("dpo", "DPO reward margins", _png(fig)))
    plt.close(fig)

    metrics = doc.get("metrics") or []
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, (key, label) in zip(axes, (("zero_shot", "0-shot"), ("three_shot", "3-shot"))):
        names = [m["device"] for m in metrics]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [m["before"][key] for m in metrics], 0.4, label="before", color="#999999")
        ax.bar([x + 0.2 for x in xs], [m["after"][key] for m in metrics], 0.4, label="after",
               color=["#55A868" if m["kept"] else "#C44E52" for m in metrics])
        ax.set_xticks(list(xs), names, rotation=15, fontsize=8)
        ax.set_title(f"{label} holdout accuracy")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    figs.append(("accuracy", "Before/after accuracy per device (green: kept, red: rejected)", _png(fig)))
    plt.close(fig)
    return figs


def write_report(doc: dict[str, Any], path: Path) -> Path:
    """A self-contained HTML page (inline PNGs) with the summary, the plots and the run's JSON."""
    figs = _figures(doc)
    body = "\n".join(f"<h2>{html.escape(title)}</h2><img alt='{name}' src='{src}'>" for name, title, src in figs)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ARTE demo: {html.escape(doc['task'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}}
pre{{background:#f5f5f5;padding:1em;overflow-x:auto;font-size:12px}}img{{max-width:100%}}</style></head><body>
<h1>ARTE demo: {html.escape(doc['task'])}</h1>
<pre>{html.escape(render_summary({**doc, 'report': None}))}</pre>
{body}
<h2>Run record</h2><details><summary>demo.json</summary><pre>{html.escape(json.dumps(doc, indent=2, default=str))}</pre></details>
</body></html>"""
    path.write_text(page, encoding="utf-8")
    return path
