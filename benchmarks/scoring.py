"""How much faster is our draft scoring than naive per-prompt evaluation, in every scoring mode, and how
close to llama.cpp's raw prompt-eval rate does it run?

Question: on the embedded model (SmolLM2-135M Q4_1, llama.cpp), score ``--drafts`` x ``--items`` (the
issue's size: 16 x 40) on two BIG-bench tasks in each mode (``cot-choice``, ``generate``, ``loglik``).
Three measurements in the same run:

* **ours** — ``arte.scoring.score_drafts`` on ``LlamaCppStudent`` (each draft's prefix evaluated once; in
  loglik all items of a draft as one token trie; in the reasoning modes continuous batching of the items'
  greedy decoding over the shared prefix, and in cot-choice each item's options scored as a trie in its own
  cells right after its reasoning);
* **naive** — the same engine on ``LlamaCppStudent(reuse=False)``: every prompt generated, and every
  (prompt + reasoning + option) evaluated, from an empty cache, one at a time. Naive is slow (several
  seconds per item), so by default it runs on a subset (``--naive-drafts`` x ``--naive-items``, the first
  drafts and items) and its time per scored item is compared with ours (naive costs the same per item
  whatever the number of drafts and items: every prompt starts from nothing); ``--naive-full`` runs it on
  everything. On the subset the outcomes of both are compared: parallel decoding changes logits within the
  Q4_1 noise, which may flip a near-tie (``agree_on_subset`` < 1);
* **raw** — llama.cpp's prompt-eval rate: 512-token batches, logits for the last token only, with flash
  attention off (our setting: it makes results independent of batching) and on (llama.cpp's default).

``unique_token_rate_vs_raw`` = (tokens ours evaluated / ours seconds) / raw rate, in loglik mode where
prompt evaluation dominates. Prints a table; the last line is JSON, with ``speedup_vs_naive`` per mode
(the mean over the tasks). On a shared 2-core machine use ``--threads 1`` (the default): two llama.cpp
threads spin-wait each other when other work runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arte.backends.llama import LlamaCppStudent, _Entry  # noqa: E402
from arte.drafts import read_drafts  # noqa: E402
from arte.home import model_dir  # noqa: E402
from arte.irt import fit_2pl, select_items, selection_agreement  # noqa: E402
from arte.models import resolve_model  # noqa: E402
from arte.scoring import MODES, ScoringConfig, score_drafts  # noqa: E402
from arte.tasks import load_task, split_task  # noqa: E402
from benchmarks._env import machine_info, versions  # noqa: E402

TASKS = ("sports_understanding", "navigate")


def raw_rate(path: Path, text: str, threads: int, flash_attn: bool, reps: int = 3) -> float:
    """Best-of-``reps`` prompt-eval tokens/s for one 512-token batch."""
    with LlamaCppStudent(path, n_threads=threads, flash_attn=flash_attn) as s:
        toks = s.tokenize(text)[:512]
        best = 0.0
        for _ in range(reps):
            s._clear()
            t0 = time.perf_counter()
            s._decode([_Entry(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)], lambda k, row: None)
            best = max(best, len(toks) / (time.perf_counter() - t0))
        return best


def run(student: LlamaCppStudent, task, drafts, items, cfg: ScoringConfig) -> tuple[float, int, np.ndarray]:
    t0_tokens = student.tokens_evaluated
    t0 = time.perf_counter()
    res = score_drafts(student, task, drafts, items, cfg)
    return time.perf_counter() - t0, student.tokens_evaluated - t0_tokens, res.outcomes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drafts", type=int, default=16)
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--naive-drafts", type=int, default=2)
    ap.add_argument("--naive-items", type=int, default=10)
    ap.add_argument("--naive-full", action="store_true", help="run naive on all drafts x items")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-parallel", type=int, default=8, help="sequences decoded together (LlamaCppStudent)")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="generation budget per item (ScoringConfig)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "bigbench")
    args = ap.parse_args()

    ref = resolve_model("default", model_dir())
    first = load_task(args.data / f"{TASKS[0]}.json")
    rate_off = raw_rate(ref.path, " ".join(e.input for e in first.examples[:400]), args.threads, False)
    rate_on = raw_rate(ref.path, " ".join(e.input for e in first.examples[:400]), args.threads, True)

    rows = []
    fast = LlamaCppStudent(ref.path, n_threads=args.threads, n_parallel=args.n_parallel)
    naive = LlamaCppStudent(ref.path, n_threads=args.threads, reuse=False)
    for name in args.tasks.split(","):
        task = load_task(args.data / f"{name}.json")
        items = list(split_task(task, seed=0, n_seeds=0).validation[:args.items])
        drafts = read_drafts(ROOT / "tests" / "data" / f"drafts_{name}.jsonl")[:args.drafts]
        for mode in args.modes.split(","):
            cfg = ScoringConfig(mode=mode, max_new_tokens=args.max_new_tokens)
            t_ours, tok_ours, out_ours = run(fast, task, drafts, items, cfg)
            nd, ni = (len(drafts), len(items)) if args.naive_full else (args.naive_drafts, args.naive_items)
            t_naive, tok_naive, out_naive = run(naive, task, drafts[:nd], items[:ni], cfg)
            agree = float(np.mean(out_naive == out_ours[:nd, :ni]))
            per_ours = t_ours / (len(drafts) * len(items))
            per_naive = t_naive / (nd * ni)
            irt = {}
            if out_ours.shape[0] >= 2:
                keep = select_items(fit_2pl(out_ours), max(1, len(items) // 2))
                groups = [d.question_id for d in drafts]
                irt = {"k": len(keep), **{f"agree_{k}": v for k, v in
                                          selection_agreement(out_ours, keep, groups).items()}}
            rows.append({"task": name, "mode": mode, "irt_top_half": irt, "drafts": len(drafts), "items": len(items),
                         "ours_s": round(t_ours, 2), "ours_tokens": tok_ours,
                         "ours_tok_per_s": round(tok_ours / t_ours, 1),
                         "ours_ms_per_item": round(1000 * per_ours, 2),
                         "ours_s_per_draft": round(t_ours / len(drafts), 2),
                         "naive_scored": nd * ni, "naive_s": round(t_naive, 2), "naive_tokens": tok_naive,
                         "naive_ms_per_item": round(1000 * per_naive, 2),
                         "speedup_vs_naive": round(per_naive / per_ours, 2), "agree_on_subset": round(agree, 3),
                         "mean_accuracy": round(float(out_ours.mean()), 4)})
            print(f"  {name}/{mode}: ours {t_ours:.1f}s, naive {t_naive:.1f}s on {nd}x{ni}", file=sys.stderr)
    fast.close()
    naive.close()

    def mean_of(mode: str, key: str) -> float:
        vals = [r[key] for r in rows if r["mode"] == mode]
        return round(float(np.mean(vals)), 3) if vals else float("nan")

    loglik_rate = mean_of("loglik", "ours_tok_per_s")
    print(f"\nScoring {args.drafts} drafts x {args.items} items, SmolLM2-135M Q4_1, llama.cpp, "
          f"{args.threads} thread(s), n_parallel {args.n_parallel}, max_new_tokens {args.max_new_tokens}; naive on "
          f"{'everything' if args.naive_full else f'{args.naive_drafts} x {args.naive_items}'}")
    print(f"raw prompt eval (512-token batch): {rate_off:.0f} tok/s flash-attn off (ours), "
          f"{rate_on:.0f} tok/s on (llama.cpp default)\n")
    hdr = (f"{'task':22} {'mode':10} {'ours s':>8} {'s/draft':>8} {'tok/s':>7} {'ms/item':>8} {'naive ms/item':>14} "
           f"{'speedup':>8} {'agree':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['task']:22} {r['mode']:10} {r['ours_s']:8.1f} {r['ours_s_per_draft']:8.2f} {r['ours_tok_per_s']:7.0f} "
              f"{r['ours_ms_per_item']:8.1f} {r['naive_ms_per_item']:14.1f} {r['speedup_vs_naive']:7.1f}x "
              f"{r['agree_on_subset']:6.2f}")
    print("\nIRT (2PL on drafts x items, top half of the items by discrimination): share of questions whose best /")
    print("worst rationale is the same on the kept items as on all items (paper: 93.3% / 86.7%)")
    for r in rows:
        i = r["irt_top_half"]
        if i:
            print(f"  {r['task']:22} {r['mode']:10} k={i['k']:3}  best {i['agree_best']:.2f}  worst "
                  f"{i['agree_worst']:.2f}  ({i['agree_groups']} questions)")
    summary = {
        "benchmark": "scoring",
        "speedup_vs_naive": {mode: mean_of(mode, "speedup_vs_naive") for mode in args.modes.split(",")},
        "unique_token_rate_vs_raw": round(loglik_rate / rate_off, 3),
        "unique_token_rate_vs_raw_flash_attn_on": round(loglik_rate / rate_on, 3),
        "raw_prompt_tok_per_s": {"flash_attn_off": round(rate_off, 1), "flash_attn_on": round(rate_on, 1)},
        "rows": rows, "config": vars(args) | {"data": str(args.data)},
        "model": {"name": ref.name, "sha256": ref.sha256},
        "machine": machine_info(), "versions": versions(["llama-cpp-python", "numpy", "arte-edge"]),
    }
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
