"""Does DPO on preference pairs move the teacher toward what the pairs prefer? (link 1 of ARTE)

Question: with a preference whose truth we know (a planted rule: e.g. rationales of at most N words,
numbered steps), does the real path — pair selection, DPO on a LoRA adapter — move the teacher's replies
on held-out questions toward the property, by how much, and does it still when the scores come through
the fleet with local differential privacy?

Method (:mod:`arte.selftest`): the teacher writes drafts; a planted scorer (:mod:`arte.planted`) scores
them (binomial counts at a rate that depends on the rule); pairs; DPO; the original and the aligned
teacher answer ``--heldout`` held-out questions over ``--sample-seeds`` sampling seeds; lift = aligned −
original rate of the property, with a two-level bootstrap interval (questions paired, seeds resampled).
Baselines in the same run: the first rule *reversed* (the lift must flip sign: rules out a generic
drift such as "DPO makes replies shorter") and *null* (random scores: the interval must contain 0).

Fleet mode (``--fleet``): the first rule again, its scores sent by ``--devices`` simulated devices to the
real server app (:mod:`benchmarks.alignment_fleet`: enrolment, reports over the HTTP API, the server's own
aggregation with local-DP inversion and the cohort's k), at each ``--epsilons`` (``inf`` = no noise) with
``--mechanism``; drafts and the original samples are shared with the offline run.

    python benchmarks/alignment.py [--teacher default] [--threads 1] [--rules short,steps] [--fleet]

Prints a table, then one line of JSON (last line) with ``lift`` (per planted rule), ``lift_ci``,
``reversed_lift``, ``null_lift_ci``, ``heldout_reward_accuracy``, ``seconds``, the fleet table, versions
and machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np

from arte.dpo import AlignConfig
from arte.drafts import read_drafts
from arte.elicit import ElicitConfig
from arte.home import model_dir
from arte.models import resolve_model
from arte.pairs import PairConfig
from arte.planted import PlantedRule
from arte.selftest import SelftestConfig, SelftestResult, offline_scorer, prepare, run_variant
from arte.tasks import load_task, split_task
from arte_cli.output import Bars
from arte_cli.selftest import openers, plot_rates, table
from benchmarks._env import machine_info, peak_rss_mib, versions  # noqa: E402
from benchmarks.alignment_fleet import FleetServer, fleet_scorer, fleet_signal, policy

log = logging.getLogger("benchmarks.alignment")


def _floats(value: str) -> list[float]:
    return [float("inf") if v.strip() in ("inf", "∞") else float(v) for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _est(by: dict[str, Any], name: str) -> float | None:
    lift = by.get(name, {}).get("lift")
    return None if lift is None else lift["estimate"]


def _ci(by: dict[str, Any], name: str) -> list[float] | None:
    lift = by.get(name, {}).get("lift")
    return None if lift is None else [lift["low"], lift["high"]]


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", type=Path, default=ROOT / "arte_cli" / "data" / "sports_understanding.json")
    ap.add_argument("--teacher", default="default")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--rules", default="short,steps")
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--max-words", type=int, default=None)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--styles", default="expert,rules,plain,eliminate")
    ap.add_argument("--rationale-tokens", type=int, default=128)
    ap.add_argument("--heldout", type=int, default=8)
    ap.add_argument("--sample-seeds", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/llama.cpp CPU threads (1 on a shared 2-core machine).")
    ap.add_argument("--fleet", action="store_true", help="Also run the first rule through the fleet.")
    ap.add_argument("--devices", type=_ints, default=[10, 100])
    ap.add_argument("--epsilons", type=_floats, default=[1.0, 2.0, 4.0, float("inf")])
    ap.add_argument("--mechanism", default="gaussian", choices=["gaussian", "laplace", "randomized_response"])
    ap.add_argument("--items-per-device", type=int, default=10)
    ap.add_argument("--drafts", type=Path, default=None, help="Reuse these drafts (an earlier run's drafts.jsonl).")
    ap.add_argument("--fleet-only", action="store_true", help="With --fleet: skip the offline variants.")
    ap.add_argument("--fleet-signal", action="store_true",
                    help="No model: from WORK_DIR's drafts and thresholds (an earlier run), the pairs the fleet makes "
                         "at each --devices x --epsilons and how many point the rule's way.")
    ap.add_argument("--work-dir", type=Path, default=Path("benchmark-alignment"))
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    if args.fleet_signal:
        return _fleet_signal(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = SelftestConfig(rules=tuple(r for r in args.rules.split(",") if r), strength=args.strength,
                         noise=args.noise, max_words=args.max_words, n_items=args.items, n_heldout=args.heldout,
                         sample_seeds=args.sample_seeds, sample_temperature=args.temperature,
                         sample_max_new_tokens=args.rationale_tokens, split_seed=args.seed, score_seed=args.seed,
                         elicit=ElicitConfig(n_questions=args.questions, styles=tuple(args.styles.split(",")),
                                             rationale_max_new_tokens=args.rationale_tokens,
                                             rationale_temperature=args.temperature, seed=args.seed))
    align_cfg = AlignConfig(learning_rate=args.lr, epochs=args.epochs, beta=args.beta, max_length=args.max_length,
                            device=args.device, seed=args.seed)
    task = load_task(args.task)
    ref = resolve_model(args.teacher, model_dir())
    open_teacher, open_drafter, align_pairs, torch_device = openers(ref, args.device, args.threads, align_cfg)
    bars = Bars()
    try:
        prep = prepare(task, cfg, args.work_dir, open_teacher=open_teacher, open_drafter=open_drafter, progress=bars,
                       drafts=read_drafts(args.drafts) if args.drafts else None)
        scorer = offline_scorer(prep.work, task.name, cfg.n_items)
        variants = []
        for i, (rule, variant) in enumerate([] if args.fleet_only else cfg.variants):
            r = prep.rule(rule, variant)
            variants.append(run_variant(prep, r, open_teacher=open_teacher, align_pairs=align_pairs, scorer=scorer,
                                        rng=np.random.default_rng([cfg.score_seed, i]), out_dir=prep.work / r.name,
                                        progress=bars))
        offline_s = time.perf_counter() - t0
        res = SelftestResult(variants, prep.drafts_summary, prep.thresholds, [e.id for e in prep.heldout],
                             {"sample_seeds": cfg.sample_seeds, **vars(args)}, offline_s)
        doc = res.to_dict()
        fleet_rows: list[dict[str, Any]] = []
        if args.fleet:
            server = FleetServer(prep.work / "fleet-server")
            try:
                for n_dev in args.devices:
                    for eps in args.epsilons:
                        f0 = time.perf_counter()
                        pol = policy(args.mechanism, eps)
                        rounds: list[dict[str, Any]] = []
                        sc = fleet_scorer(server, n_devices=n_dev, items_per_device=args.items_per_device, pol=pol,
                                          log=rounds)
                        name = f"fleet-{n_dev}dev-eps{eps:g}"
                        v = run_variant(prep, prep.rule(cfg.rules[0], "planted"), open_teacher=open_teacher,
                                        align_pairs=align_pairs, scorer=sc,
                                        rng=np.random.default_rng([cfg.score_seed, 100, n_dev, int(min(eps, 1e6))]),
                                        out_dir=prep.work / name, progress=bars)
                        fleet_rows.append({"devices": n_dev, "epsilon": None if math.isinf(eps) else eps,
                                           "mechanism": pol.mechanism, "pairs": v.pairs["total"],
                                           "chosen_holds": v.pairs["chosen_holds"], "lift": v.lift,
                                           "outcome": v.outcome, "aggregate": rounds[-1] if rounds else None,
                                           "seconds": round(time.perf_counter() - f0, 1)})
            finally:
                server.close()
    finally:
        bars.close()
    seconds = time.perf_counter() - t0
    doc.update(task=task.name, teacher={"name": ref.name, "sha256": ref.sha256}, device=torch_device,
               seconds=round(seconds, 1))
    plot = plot_rates(doc, args.plot or args.work_dir / "alignment.png")

    print(f"\nPlanted-preference alignment, teacher {ref.name} ({torch_device}, {args.threads} thread(s)), task "
          f"{task.name}: {doc['drafts']['kept']} drafts, {args.heldout} held-out questions x {args.sample_seeds} "
          f"seeds, DPO lr {args.lr} x {args.epochs} epochs\n")
    print(table(doc))
    if fleet_rows:
        print(f"\nThrough the fleet ({args.rules.split(',')[0]}, {args.mechanism}, "
              f"{args.items_per_device} items per device):")
        print(f"{'devices':>7} {'epsilon':>8} {'pairs':>5} {'chosen has it':>13} {'lift (95% CI), pp':>26}")
        for r in fleet_rows:
            lift = r["lift"]
            ci = "no pairs" if lift is None else f"{_pp(lift['estimate'])} [{_pp(lift['low'])}, {_pp(lift['high'])}]"
            ch = "-" if r["chosen_holds"] is None else f"{r['chosen_holds']:.2f}"
            print(f"{r['devices']:>7} {('inf' if r['epsilon'] is None else r['epsilon']):>8} {r['pairs']:>5} "
                  f"{ch:>13} {ci:>26}")
    print(f"\nplot: {plot}; total {seconds:.0f} s")

    by = {v["name"]: v for v in doc["variants"]}
    first = cfg.rules[0]
    planted = [v for v in doc["variants"] if v["variant"] == "planted"]
    summary = {
        "benchmark": "alignment",
        "lift": {v["rule"]: v["lift"] and v["lift"]["estimate"] for v in planted},
        "lift_ci": {v["rule"]: v["lift"] and [v["lift"]["low"], v["lift"]["high"]] for v in planted},
        "reversed_lift": _est(by, f"{first}-reversed"),
        "reversed_lift_ci": _ci(by, f"{first}-reversed"),
        "null_lift_ci": _ci(by, f"{first}-null"),
        "null_outcome": by.get(f"{first}-null", {}).get("outcome"),
        "heldout_reward_accuracy": {v["name"]: v["heldout_reward_accuracy"] for v in doc["variants"]},
        "pairs": {v["name"]: v["pairs"]["total"] for v in doc["variants"]},
        "rates": {v["name"]: [v["original_rate"], v["aligned_rate"]] for v in doc["variants"]},
        "variant_seconds": {v["name"]: v["seconds"] for v in doc["variants"]},
        "verdict": doc["verdict"], "thresholds": doc["thresholds"], "fleet": fleet_rows,
        "seconds": round(seconds, 1), "offline_seconds": round(offline_s, 1), "config": vars(args),
        "peak_rss_mib": round(peak_rss_mib(), 1), "machine": machine_info(),
        "versions": versions(["torch", "transformers", "trl", "peft", "llama_cpp_python", "numpy", "arte-edge"]),
    }
    (args.work_dir / "alignment.json").write_text(json.dumps({**doc, "summary": summary}, indent=1, default=str))
    print(json.dumps(summary, default=str))
    return summary


def _fleet_signal(args: argparse.Namespace) -> dict[str, Any]:
    """``--fleet-signal``: the fleet's pairs without a model (see the option's help)."""

    t0 = time.perf_counter()
    task = load_task(args.task)
    prev = json.loads((args.work_dir / "alignment.json").read_text())
    drafts = read_drafts(args.work_dir / "drafts.jsonl")
    seeds = split_task(task, seed=args.seed, n_seeds=6, validation=args.heldout).seeds
    rule = PlantedRule(args.rules.split(",")[0], strength=args.strength, noise=args.noise, **prev["thresholds"])
    server = FleetServer(args.work_dir / "fleet-signal-server")
    try:
        rows = fleet_signal(server, task, drafts, seeds, rule, devices=args.devices, epsilons=args.epsilons,
                            mechanism=args.mechanism, items_per_device=args.items_per_device,
                            pair_config=PairConfig(kinds=("rationale",)), seed=args.seed)
    finally:
        server.close()
    print(f"\nFleet signal for {rule.describe()}: {len(drafts)} drafts of {args.work_dir}, {args.mechanism}, "
          f"{args.items_per_device} items per device (pairs from the server's aggregate; no model)\n")
    print(f"{'devices':>7} {'epsilon':>8} {'pairs':>5} {'right way':>9} {'wrong way':>9}")
    for r in rows:
        print(f"{r['devices']:>7} {('inf' if r['epsilon'] is None else r['epsilon']):>8} {r['pairs']:>5} "
              f"{r['right_way']:>9} {r['wrong_way']:>9}")
    summary = {"benchmark": "alignment-fleet-signal", "rule": rule.name, "thresholds": prev["thresholds"],
               "rows": rows, "seconds": round(time.perf_counter() - t0, 1), "config": vars(args),
               "machine": machine_info(), "versions": versions(["fastapi", "sqlalchemy", "numpy", "arte-edge"])}
    print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
