"""What local differential privacy costs the server's preference pairs.

Question: when devices noise their per-draft counts (randomized response, Laplace, analytic Gaussian; see
``arte.privacy``), how often does the server still build the same chosen/rejected pairs as it would from
the exact counts, as a function of the per-round ε and of the number of devices pooled?

Method. Real outcomes first: the embedded student (SmolLM2-135M Q4_1, llama.cpp, ``loglik`` mode) scores
the 16 development drafts of each of two BIG-bench tasks (``tests/data/drafts_navigate.jsonl``,
``tests/data/drafts_sports_understanding.jsonl``) on ``--items`` validation items of the task (items a
draft was written from are left out); the draft × item outcome matrices are cached under ``--cache-dir``
(keyed by the model's and the drafts' sha256), so only the first run pays for scoring. Then a fleet is
simulated per trial: each device holds ``--items-per-device`` items drawn without replacement from the
scored items and reports its 16 counts per task through ``arte.privacy.privatize`` (one round per task,
ε per round, δ = ``--delta`` for the Gaussian); the server inverts and pools them with
``arte.privacy.debias_counts`` / ``pool_accuracy``. Pairs: per question (the drafts sharing a
``question_id``), the draft with the highest pooled accuracy is chosen and the lowest rejected. The
reference is the noise-free pairs of the SAME devices and items (a question whose drafts all tie there
yields no pair and is skipped). Metrics per trial, averaged over ``--trials`` trials with a 95%
interval: *pair agreement* (the chosen ties the reference best AND the rejected ties the reference
worst) and *direction* (the chosen's exact accuracy beats the rejected's). Baselines in the same run:
ε = ∞ (no noise: 1 by construction) and random pairs (chosen/rejected drawn at random).

Run: ``.venv/bin/python benchmarks/privacy.py`` (a few minutes the first time on 2 cores, seconds after).
On a shared, busy machine ``--threads 1`` scored 4.5x faster than 2 threads (llama.cpp's threads wait on
each other when they are not scheduled together); the published numbers were scored with 1 thread.
Prints a human table and, as its last line, one JSON document with the numbers, versions and machine;
writes the utility plot to ``--plot``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import importlib.metadata as md

from arte.backends import open_student
from arte.drafts import read_drafts
from arte.home import arte_home, model_dir
from arte.models import resolve_model
from arte.privacy import calibrate, debias_counts, pool_accuracy, privatize  # noqa: E402
from arte.scoring import ScoringConfig, score_drafts
from arte.tasks import load_task, split_task

log = logging.getLogger("benchmarks.privacy")

TASKS = ("navigate", "sports_understanding")
MECHANISMS = ("randomized_response", "laplace", "gaussian")
EPSILONS = (0.5, 1.0, 2.0, 4.0, float("inf"))
DEVICES = (1, 10, 100)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outcome_matrix(task_name: str, bigbench: Path, n_items: int, cache_dir: Path, threads: int) -> dict:
    """The real draft × item outcome matrix of one task (cached); keys: outcomes, draft_ids, question_ids,
    item_ids, seconds (the scoring time, also when read back from the cache), cached."""

    drafts_path = ROOT / "tests" / "data" / f"drafts_{task_name}.jsonl"
    ref = resolve_model("default", model_dir())
    key = f"{_sha(ref.path)}|{_sha(drafts_path)}|{task_name}|{n_items}|loglik"
    key = hashlib.sha256(key.encode()).hexdigest()
    cache = cache_dir / f"privacy-outcomes-{task_name}-{n_items}-{key[:16]}.npz"
    drafts = read_drafts(drafts_path)
    if cache.is_file():
        z = np.load(cache)
        return {"outcomes": z["outcomes"], "draft_ids": list(z["draft_ids"]),
                "question_ids": list(z["question_ids"]), "item_ids": list(z["item_ids"]),
                "seconds": float(z["seconds"]), "cached": True}

    task = load_task(bigbench / f"{task_name}.json")
    sources = {str(d.provenance.get("source_example", "")) for d in drafts}
    pool = [e for e in split_task(task, seed=0, n_seeds=0, validation=1.0).validation if e.id not in sources]
    items = pool[:n_items]
    student = open_student(ref, "llama", n_threads=threads)
    try:
        t0 = time.perf_counter()
        result = score_drafts(student, task, drafts, items, ScoringConfig(mode="loglik"))
        seconds = time.perf_counter() - t0
    finally:
        student.close()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, outcomes=result.outcomes, draft_ids=np.array([d.id for d in drafts]),
             question_ids=np.array([d.question_id for d in drafts]), item_ids=np.array(result.item_ids),
             seconds=np.array(seconds))
    tmp.replace(cache)
    return {"outcomes": result.outcomes, "draft_ids": [d.id for d in drafts],
            "question_ids": [d.question_id for d in drafts], "item_ids": result.item_ids,
            "seconds": seconds, "cached": False}


def _groups(question_ids: list[str]) -> list[np.ndarray]:
    return [np.array([i for i, q in enumerate(question_ids) if q == g]) for g in dict.fromkeys(question_ids)]


def pair_scores(est: np.ndarray, ref: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per trial (rows of ``est``/``ref``, shape (T, D)): (agreed pairs, right-direction pairs) summed
    over the groups whose reference has a pair, and the number of such groups, as (T, 3)-able arrays."""
    agree = np.zeros(len(est))
    direction = np.zeros(len(est))
    valid = np.zeros(len(est))
    rows = np.arange(len(est))
    for g in groups:
        e, r = est[:, g], ref[:, g]
        rmax, rmin = r.max(axis=1), r.min(axis=1)
        ok = rmax > rmin
        chosen, rejected = np.argmax(e, axis=1), np.argmin(e, axis=1)
        rc, rr = r[rows, chosen], r[rows, rejected]
        agree += ok & (rc == rmax) & (rr == rmin)
        direction += ok & (rc > rr)
        valid += ok
    return np.stack([agree, direction]), valid


def simulate(matrices: list[dict], *, trials: int, items_per_device: int, delta: float,
             seed: int) -> dict:
    """Agreement per (mechanism, ε, devices), plus the random-pairs baseline per devices."""
    rng = np.random.default_rng(seed)
    results: dict = {}
    for m in DEVICES:
        # One fleet sample per trial, shared by every mechanism and ε (common random numbers).
        fleet = []
        for mat in matrices:
            y = mat["outcomes"].astype(np.int8)
            d, n = y.shape
            idx = np.argsort(rng.random((trials, m, n)), axis=2)[:, :, :items_per_device]
            fleet.append(np.take_along_axis(y[None, None, :, :], idx[:, :, None, :], axis=3))  # (T, m, D, k)
        refs = [f.sum(axis=(1, 3)) / (m * items_per_device) for f in fleet]                  # (T, D)
        groups = [_groups(mat["question_ids"]) for mat in matrices]
        configs: list[tuple[str, float | None]] = [("random", None)]
        configs += [(mech, eps) for mech in MECHANISMS for eps in EPSILONS]
        for mech, eps in configs:
            tot = np.zeros((2, trials))
            valid = np.zeros(trials)
            for f, ref, g in zip(fleet, refs, groups):
                if mech == "random":
                    acc = rng.random(ref.shape)
                else:
                    cal = calibrate("none" if eps == float("inf") else mech, eps,
                                    delta if mech == "gaussian" else 0.0, f.shape[2])
                    noisy = privatize(f, cal, rng)                                          # (T, m, D)
                    est, var = debias_counts(noisy, items_per_device, cal)
                    acc, _, _ = pool_accuracy(np.moveaxis(est, 1, 0), items_per_device,
                                              np.moveaxis(var, 1, 0))
                s, v = pair_scores(acc, ref, g)
                tot += s
                valid += v
            keep = valid > 0
            frac = tot[:, keep] / valid[keep]
            mean = frac.mean(axis=1)
            n_ok = int(keep.sum())
            half = 1.96 * frac.std(axis=1, ddof=1) / np.sqrt(n_ok) if n_ok > 1 else np.full(2, np.nan)
            results[(mech, eps, m)] = {"agreement": float(mean[0]), "agreement_ci": float(half[0]),
                                       "direction": float(mean[1]), "direction_ci": float(half[1]),
                                       "trials": n_ok, "pairs_per_trial": float(valid[keep].mean())}
    return results


def noise_table(items_per_device: int, delta: float, n_drafts: int) -> dict:
    """Standard deviation of one device's unbiased accuracy estimate per draft, from the noise alone."""
    out = {}
    for mech in MECHANISMS:
        for eps in EPSILONS[:-1]:
            cal = calibrate(mech, eps, delta if mech == "gaussian" else 0.0, n_drafts)
            _, var = debias_counts(np.zeros(1), items_per_device, cal)
            out[(mech, eps)] = float(np.sqrt(var[0])) / items_per_device
    return out


def _cells(cells: list[dict], metric: str) -> str:
    return "".join(f"{c[metric]:>10.3f} ±{c[metric + '_ci']:.3f}" for c in cells)


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    versions = {"python": platform.python_version()}
    for pkg in ("numpy", "llama-cpp-python", "matplotlib", "arte-edge"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions}


def plot(results: dict, path: Path, items_per_device: int, delta: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0.5, 1, 2, 4, 8]          # ∞ drawn at 8
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    names = {"randomized_response": "randomized response", "laplace": "Laplace",
             "gaussian": f"Gaussian (δ={delta:g})"}
    for ax, mech in zip(axes, MECHANISMS):
        for m, color in zip(DEVICES, ("tab:red", "tab:orange", "tab:green")):
            ys = [results[(mech, e, m)]["agreement"] for e in EPSILONS]
            es = [results[(mech, e, m)]["agreement_ci"] for e in EPSILONS]
            ax.errorbar(xs[:-1], ys[:-1], yerr=es[:-1], marker="o", capsize=3, color=color,
                        label=f"{m} device(s)")
            ax.plot(xs[-1:], ys[-1:], marker="o", color=color)   # no noise: 1 by construction
            ax.axhline(results[("random", None, m)]["agreement"], color=color, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, ["0.5", "1", "2", "4", "∞"])
        ax.set_title(names[mech])
        ax.set_xlabel("ε per round (16 drafts per report)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pair agreement with noise-free pairs")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Utility of local DP: {items_per_device} items per device; dotted = random pairs",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bigbench", type=Path, default=ROOT / "tests" / "data" / "bigbench",
                   help="Directory with the BIG-bench task.json files.")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="Where the outcome matrices are cached (default: $ARTE_HOME/bench).")
    p.add_argument("--items", type=int, default=40, help="Validation items scored per task.")
    p.add_argument("--items-per-device", type=int, default=20, help="Items each simulated device holds.")
    p.add_argument("--trials", type=int, default=400, help="Simulated fleets per setting.")
    p.add_argument("--delta", type=float, default=1e-6, help="Per-round delta of the Gaussian mechanism.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the simulation.")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for scoring.")
    p.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "privacy_utility.png",
                   help="Where to write the utility plot (PNG).")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if args.cache_dir is None:

        args.cache_dir = arte_home() / "bench"
    if not 1 <= args.items_per_device <= args.items:
        p.error(f"--items-per-device must be in [1, --items={args.items}]")

    matrices = []
    for t in TASKS:
        log.info("outcome matrix of %s (%d items)...", t, args.items)
        mat = outcome_matrix(t, args.bigbench, args.items, args.cache_dir, args.threads)
        matrices.append(mat)
    t0 = time.perf_counter()
    results = simulate(matrices, trials=args.trials, items_per_device=args.items_per_device, delta=args.delta,
                       seed=args.seed)
    sim_seconds = time.perf_counter() - t0
    noise = noise_table(args.items_per_device, args.delta, 16)
    plot(results, args.plot, args.items_per_device, args.delta)

    print(f"Real outcomes: SmolLM2-135M Q4_1 (llama.cpp), loglik, {len(TASKS)} tasks x 16 drafts x "
          f"{args.items} items")
    for t, mat in zip(TASKS, matrices):
        y = mat["outcomes"]
        acc = y.mean(axis=1)
        g = _groups(mat["question_ids"])
        spread = np.mean([acc[i].max() - acc[i].min() for i in g])
        print(f"  {t:22} mean accuracy {acc.mean():.3f}, draft accuracy {acc.min():.3f}-{acc.max():.3f}, "
              f"mean best-worst gap per question {spread:.3f}, "
              + ("cached, " if mat["cached"] else "") + f"scored in {mat['seconds']:.0f} s")
    print(f"\nSimulated fleets: {args.items_per_device} items per device, {args.trials} trials per cell, "
          f"Gaussian delta {args.delta:g}; pairs = best vs worst draft per question (8 questions)")
    print("\nNoise alone: std of ONE device's accuracy estimate per draft (16 drafts per report)")
    print(f"{'mechanism':22}" + "".join(f"{'eps=' + format(e, 'g'):>10}" for e in EPSILONS[:-1]))
    for mech in MECHANISMS:
        print(f"{mech:22}" + "".join(f"{noise[(mech, e)]:10.3f}" for e in EPSILONS[:-1]))
    for metric, title in (("agreement", "Pair agreement with the noise-free pairs (chosen AND rejected "
                                        "match)"),
                          ("direction", "Right direction (chosen's exact accuracy > rejected's)")):
        print(f"\n{title}, mean ± 95% CI")
        print(f"{'mechanism':22}{'eps':>6}" + "".join(f"{str(m) + ' dev':>17}" for m in DEVICES))
        for mech in MECHANISMS:
            for eps in EPSILONS:
                cells = [results[(mech, eps, m)] for m in DEVICES]
                print(f"{mech:22}{eps:>6g}" + _cells(cells, metric))
        cells = [results[("random", None, m)] for m in DEVICES]
        print(f"{'random pairs':22}{'-':>6}" + _cells(cells, metric))
    print(f"\nplot: {args.plot}   simulation {sim_seconds:.1f} s")

    rows = [{"mechanism": k[0], "epsilon": None if k[1] is None or k[1] == float("inf") else k[1],
             "epsilon_label": "random" if k[1] is None else format(k[1], "g"), "devices": k[2],
             **{name: round(x, 4) if isinstance(x, float) else x for name, x in v.items()}}
            for k, v in results.items()]
    out = {"benchmark": "privacy", "tasks": list(TASKS), "drafts_per_task": 16, "items_scored": args.items,
           "items_per_device": args.items_per_device, "trials": args.trials, "delta": args.delta,
           "seed": args.seed,
           "model": "SmolLM2-135M-Instruct-Q4_1", "mode": "loglik",
           "scoring_seconds": {t: round(m["seconds"], 1) for t, m in zip(TASKS, matrices)},
           "cached": all(m["cached"] for m in matrices), "simulation_seconds": round(sim_seconds, 2),
           "draft_accuracy": {t: [round(float(a), 4) for a in m["outcomes"].mean(axis=1)]
                              for t, m in zip(TASKS, matrices)},
           "noise_std_accuracy_one_device": {f"{k[0]}@{k[1]:g}": round(v, 4) for k, v in noise.items()},
           "results": rows, "plot": str(args.plot), "machine": machine()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
