"""What does our DPO alignment path cost over bare TRL, and how fast does it train?

Question: ``arte.dpo.align`` wraps TRL's ``DPOTrainer`` + PEFT LoRA (config validation, dataset
conversion, progress callback, metadata, stable adapter names). Is that wrapper free? Same run, same
preference pairs, same model, same hyper-parameters, each path in its own fresh process (so peak memory
is its own), alternating ``ours, trl, ours, trl, …`` for ``--repeats`` rounds:

* **ours** — ``align(model_ref, pairs, AlignConfig(eval_pairs=0, holdout_share=0, …), out_dir)``: the
  whole call, on every pair as TRL;
* **trl** — the plain recipe (RUNTIME-NOTES §6): ``load_hf``, ``Dataset.from_list``, ``DPOConfig``,
  ``DPOTrainer(peft_config=LoraConfig(…))``, ``train()``, ``save_model()``;
* **ours + margins** (once) — ``align`` with its default before/after reward-margin evaluation on up to 64
  training pairs: what the measurement that the metadata reports costs on top.

Reported per path (median over repeats): end-to-end seconds (load + train + save), train seconds,
training tokens/s (TRL's ``num_tokens``: chosen + rejected tokens seen by the policy), peak memory (max RSS
of the process on CPU; ``torch.cuda.max_memory_allocated`` on GPU), and the overhead ratio
``ours / trl - 1`` (target <= 5 %). On CPU the ratio uses process CPU time (and tokens per CPU-second):
on a shared machine wall time moves by tens of percent with other people's load, CPU time far less;
wall-clock figures are printed too. The runs go in ABBA order so that a drifting load favours neither.
On CUDA also the model FLOPs utilization: per training token 6·N (policy forward + input-gradient
backward through the frozen base, reference forward) + attention, over the GPU's dense bf16 peak.

Models: ``default`` (the embedded SmolLM2-135M, dequantized), ``smollm2-random`` (its shape, random
weights: 30 layers, d=576, 9/3 heads, vocab 49152, ffn 1536), ``llama-1b-random`` (a Llama-3.2-1B shape:
16 layers, d=2048, 32/8 heads, ffn 8192, SmolLM2's vocabulary), or an HF model directory.

Usage: ``python benchmarks/dpo.py [--model default] [--steps 6] [--repeats 2] [--threads 1]``;
on a GPU: ``python benchmarks/dpo.py --device cuda --model llama-1b-random --batch-size 8 --steps 20``.
Prints a table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from arte.backends.hf import load_hf
from arte.dpo import AlignConfig, align
from arte.home import convert_dir, model_dir
from arte.models import ModelRef, resolve_model
from arte.pairs import PreferencePair
from arte.prompts import rationale_prompt
from arte.tasks import format_question, load_task
from benchmarks._env import machine_info, peak_rss_mib, versions  # noqa: E402

RANDOM_SHAPES = {
    "smollm2-random": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3),
    "llama-1b-random": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                            num_attention_heads=32, num_key_value_heads=8),
}
# Dense bf16 peak FLOP/s by GPU name (vendor data sheets).
GPU_PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12,
                 "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def make_pairs(n: int) -> list[Any]:
    """``n`` rationale pairs on BIG-bench sports_understanding questions (plain prompt, as alignment uses);
    vendored in tests/data/bigbench."""

    task = load_task(ROOT / "tests" / "data" / "bigbench" / "sports_understanding.json")
    pairs = []
    for i, e in enumerate(task.examples[:n]):
        other = next(c for c in e.choices if c != e.answer)
        q = format_question(task, e)
        chosen = (f"The statement names an athlete and an action. I recall which sport the athlete plays and check "
                  f"whether the action belongs to it. It does{'' if e.answer == 'plausible' else ' not'}, so "
                  f"the statement is {e.answer}. <ans>{e.answer}</ans>")
        pairs.append(PreferencePair(id=f"b{i}", kind="rationale",
                                    prompt=tuple(rationale_prompt(task, q, "plain")), chosen=chosen,
                                    rejected=f"Hard to say. <ans>{other}</ans>", margin=1.0,
                                    chosen_ids=(f"c{i}",), rejected_ids=(f"r{i}",), task=task.name))
    return pairs


def model_ref(name: str, work: Path) -> Any:
    """The benchmark model as a ModelRef (random-weight shapes are built once into ``work``)."""

    if name == "default" or Path(name).exists():
        return resolve_model(name, model_dir())
    if name not in RANDOM_SHAPES:
        raise SystemExit(f"--model: unknown {name!r}; use default, {', '.join(RANDOM_SHAPES)} or a path")
    out = work / name
    if not (out / "config.json").is_file():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        _, tok = load_hf(resolve_model("default", model_dir()), convert_dir=convert_dir())
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                          tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                          **RANDOM_SHAPES[name])
        LlamaForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    return ModelRef("hf", out, name)


# ---- one path, in a child process -------------------------------------------------------------------

def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    work = Path(spec["work"])
    ref = model_ref(spec["model"], work)
    pairs = make_pairs(spec["pairs"])
    out = Path(tempfile.mkdtemp(prefix=f"dpo-{spec['path']}-", dir=work))
    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    if spec["path"] in ("ours", "ours+margins"):

        cfg = AlignConfig(learning_rate=spec["lr"], beta=0.1, max_steps=spec["steps"], batch_size=spec["batch_size"],
                          warmup_ratio=0.1, max_length=spec["max_length"], device=spec["device"], seed=0,
                          eval_pairs=64 if spec["path"] == "ours+margins" else 0,
                          holdout_share=0.0)   # train on the same pairs as the plain TRL path
        res = align(ref, pairs, cfg, out, convert_dir=convert_dir())
        train_s, tokens = res.metadata["seconds"]["train"], res.metadata["train_tokens"]
        train_cpu_s = res.metadata["seconds"]["train_cpu"]
        steps = res.metadata["steps"]
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import DPOConfig, DPOTrainer

        model, tok = load_hf(ref, convert_dir=convert_dir())
        ds = Dataset.from_list([p.to_trl() for p in pairs])
        bf16 = cuda and torch.cuda.is_bf16_supported()
        args = DPOConfig(output_dir=str(out / "trainer"), beta=0.1, learning_rate=spec["lr"],
                         max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
                         warmup_ratio=0.1, lr_scheduler_type="cosine", max_length=spec["max_length"], seed=0,
                         use_cpu=not cuda, bf16=bf16, gradient_checkpointing=False, logging_steps=1,
                         save_strategy="no", report_to="none", disable_tqdm=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        t1, c1 = time.perf_counter(), time.process_time()
        trainer.train()
        train_s, train_cpu_s = time.perf_counter() - t1, time.process_time() - c1
        trainer.save_model(str(out))
        tokens = next(h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h)
        steps = trainer.state.global_step
    total_s, total_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    result = {"path": spec["path"], "total_s": total_s, "train_s": train_s, "total_cpu_s": total_cpu_s,
              "train_cpu_s": train_cpu_s, "tokens": tokens, "steps": steps, "tok_per_s": tokens / train_s,
              "tok_per_cpu_s": tokens / train_cpu_s, "peak_rss_mib": peak_rss_mib()}
    if cuda:
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def model_shape(ref: Any) -> dict[str, int]:
    """Parameter count (tied embeddings once: they are the LM head's matmul), layers and width."""

    model, _ = load_hf(ref, convert_dir=convert_dir())
    return {"n_params": sum(p.numel() for p in model.parameters()), "layers": model.config.num_hidden_layers,
            "d": model.config.hidden_size}


def flops_per_token(n_params: int, layers: int, d: int, seq: float) -> float:
    """Training FLOPs per token of LoRA-DPO: policy forward (2N) + backward through the frozen base for
    input gradients only (2N; the LoRA weight gradients are negligible) + reference forward (2N), plus
    causal attention scores and mixing (2·2·L·d·seq/2 per forward, ×3 passes)."""
    return 6 * n_params + 3 * 2 * layers * d * seq


# ---- the parent: alternate the paths, report --------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="default, smollm2-random, llama-1b-random or a path")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Training device.")
    ap.add_argument("--pairs", type=int, default=32, help="Preference pairs.")
    ap.add_argument("--steps", type=int, default=6, help="Optimizer steps per run.")
    ap.add_argument("--batch-size", type=int, default=4, help="Pairs per step.")
    ap.add_argument("--max-length", type=int, default=256, help="Tokens per sequence.")
    ap.add_argument("--lr", type=float, default=5e-5, help="Learning rate.")
    ap.add_argument("--repeats", type=int, default=2, help="Alternating rounds of ours/trl.")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 on a shared 2-core machine: 2 threads spin-wait each other).")
    ap.add_argument("--no-margins", action="store_true", help="Skip the ours+margins run.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    with tempfile.TemporaryDirectory(prefix="arte-bench-dpo-") as tmp:
        base = {"model": args.model, "device": args.device, "pairs": args.pairs, "steps": args.steps,
                "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr,
                "threads": args.threads, "work": tmp}
        shape = model_shape(model_ref(args.model, Path(tmp)))   # builds a random model once, untimed
        # ABBA order: a load that drifts during the run (a shared machine) biases neither path.
        order = [p for r in range(args.repeats) for p in (("ours", "trl") if r % 2 == 0 else ("trl", "ours"))]
        order += [] if args.no_margins else ["ours+margins"]
        runs: list[dict[str, Any]] = []
        for path in order:
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({**base, "path": path})],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"the {path} run failed (exit {proc.returncode})")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(r)
            print(f"  {path:13} total {r['total_s']:7.1f}s (cpu {r['total_cpu_s']:7.1f}s)  train {r['train_s']:7.1f}s "
                  f"(cpu {r['train_cpu_s']:7.1f}s)  {r['tok_per_s']:6.1f} tok/s  {r['tok_per_cpu_s']:6.1f} tok/cpu-s  "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)

    def med(path: str, key: str) -> float | None:
        vals = [r[key] for r in runs if r["path"] == path and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    keys = ("total_s", "train_s", "total_cpu_s", "train_cpu_s", "tok_per_s", "tok_per_cpu_s", "peak_rss_mib",
            "peak_gpu_mib")
    rows = {p: {k: med(p, k) for k in keys} for p in dict.fromkeys(r["path"] for r in runs)}
    n_params = shape["n_params"]
    tokens_per_seq = runs[0]["tokens"] / (2 * args.steps * args.batch_size)
    for p, row in rows.items():
        row["runs"] = sum(r["path"] == p for r in runs)
        if args.device == "cuda":
            name = runs[0].get("gpu", "")
            peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
            achieved = flops_per_token(n_params, shape["layers"], shape["d"], tokens_per_seq) * row["tok_per_s"]
            row["tflops"] = achieved / 1e12
            row["mfu"] = achieved / peak if peak else None
    # Wall-clock on the device that matters; on a shared CPU, process CPU time is the steadier measure.
    clock = "total_cpu_s" if args.device == "cpu" else "total_s"
    rate = "tok_per_cpu_s" if args.device == "cpu" else "tok_per_s"
    overhead_total = rows["ours"][clock] / rows["trl"][clock] - 1
    overhead_train = rows["trl"][rate] / rows["ours"][rate] - 1
    overhead_wall = rows["ours"]["total_s"] / rows["trl"]["total_s"] - 1

    print(f"\nDPO + LoRA (r=8, q/k/v/o), {args.model} ({n_params / 1e6:.1f} M params) on {args.device}, "
          f"{args.pairs} pairs, {args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, "
          f"{args.threads} thread(s); medians of {args.repeats} alternating runs\n")
    mem = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
    hdr = f"{'path':14} {'total s':>8} {'cpu s':>8} {'train s':>8} {'tok/s':>8} {'tok/cpu-s':>10} {mem:>13}" + \
          ("  TFLOP/s    MFU" if args.device == "cuda" else "")
    print(hdr)
    print("-" * len(hdr))
    for p, row in rows.items():
        m = row["peak_gpu_mib"] if args.device == "cuda" else row["peak_rss_mib"]
        line = (f"{p:14} {row['total_s']:8.1f} {row['total_cpu_s']:8.1f} {row['train_s']:8.1f} "
                f"{row['tok_per_s']:8.1f} {row['tok_per_cpu_s']:10.1f} {m:13.0f}")
        if args.device == "cuda":
            mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
            line += f"  {row['tflops']:7.2f} {mfu:>6}"
        print(line)
    print(f"\noverhead of ours vs bare TRL ({'CPU time' if args.device == 'cpu' else 'wall clock'}): "
          f"{overhead_total:+.1%} end to end, {overhead_train:+.1%} in training throughput (target <= 5%); "
          f"wall clock end to end: {overhead_wall:+.1%}")
    if "ours+margins" in rows:
        extra = rows["ours+margins"]["total_s"] - rows["ours"]["total_s"]
        print(f"before/after reward-margin evaluation (eval_pairs=64) adds {extra:.1f}s")
    summary = {"benchmark": "dpo", "overhead_ratio": {"end_to_end": round(overhead_total, 4),
                                                      "train_throughput": round(overhead_train, 4),
                                                      "end_to_end_wall": round(overhead_wall, 4),
                                                      "measured_on": clock},
               "rows": rows, "runs": runs, "config": vars(args), "model_shape": shape,
               "machine": machine_info(),
               "versions": versions(["torch", "transformers", "trl", "peft", "accelerate", "datasets", "arte-edge"])}
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
