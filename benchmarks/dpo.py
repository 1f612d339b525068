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
of the process on CPU; ``torch.cuda.max_memory_allocated`` on GPU, each run its own process), and the
overhead ratio ``ours / trl - 1`` (target <= 5 %). On CPU the ratio uses process CPU time (and tokens per
CPU-second): on a shared machine wall time moves by tens of percent with other people's load, CPU time far
less; wall-clock figures are printed too. The runs go in ABBA order so that a drifting load favours neither.

MFU (model FLOPs utilization) = ``8 · N · tokens/s / peak``: ``N`` the base model's parameters (tied
embeddings once), ``6·N`` per token for the policy's forward + backward (the usual training convention,
counted on all parameters although LoRA skips the frozen weights' gradients) plus ``2·N`` for the
reference model's forward over the same tokens; attention-score FLOPs are left out, as in issue 17's
anchors. ``peak`` is the GPU's dense bf16 FLOP/s (H100 SXM and H200: 989e12; ``--peak-tflops``
overrides it); on CPU the MFU is null.

Models: ``default`` (the embedded SmolLM2-135M, dequantized), an HF model directory, or a random-weight
llama built with transformers from a config (nothing downloaded; SmolLM2's tokenizer, whose ids fit every
vocabulary): ``--config 135m`` (SmolLM2-135M's shape: 30 layers, d=576, 9/3 heads, ffn 1536, vocab
49152), ``--config 1b`` (Llama-3.2-1B's: 16 layers, d=2048, 32/8 heads, ffn 8192, vocab 128256, tied
embeddings), ``--config 8b`` (Llama-3.1-8B's: 32 layers, d=4096, 32/8 heads, ffn 14336, vocab 128256,
untied). A ``--config`` run defaults to issue 17's batch shape (135m: 16 pairs x 2 x 512 tokens; 1b and
8b: 8 resp. 4 pairs x 2 x 1024) with completions long enough that every sequence is cut at
``--max-length``; ``--layers`` shrinks the depth for smoke runs. ``--model smollm2-random`` (= 135m) and
``llama-1b-random`` (the 1B shape with SmolLM2's vocabulary) are the older names.

Usage: ``python benchmarks/dpo.py [--model default] [--steps 6] [--repeats 2] [--threads 1]``;
on a GPU: ``python benchmarks/dpo.py --device cuda --config 1b --steps 20 --no-margins``; a CPU smoke
run (about a minute): ``python benchmarks/dpo.py --config 135m --layers 2 --steps 2 --pairs 4
--batch-size 2 --max-length 128 --repeats 1 --no-margins`` (the prompt alone is ~70 tokens).
Prints a table; the last line is JSON. Not run in CI.
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

_SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
_LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
             "num_key_value_heads": 8, "tie_word_embeddings": True}
RANDOM_SHAPES = {
    "135m": _SMOLLM2,                                   # SmolLM2-135M
    "1b": {**_LLAMA_1B, "vocab_size": 128256},          # Llama-3.2-1B
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,     # Llama-3.1-8B
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
    "smollm2-random": _SMOLLM2,
    "llama-1b-random": {**_LLAMA_1B, "vocab_size": 49152},
}
# --config NAME: (pairs per step, tokens per sequence), issue 17's anchor shapes.
CONFIG_BATCH = {"135m": (16, 512), "1b": (8, 1024), "8b": (4, 1024)}
# Dense bf16 peak FLOP/s by GPU name (vendor data sheets); first substring match wins.
GPU_PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12,
                 "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def make_pairs(n: int, fill: int = 0) -> list[Any]:
    """``n`` rationale pairs on BIG-bench sports_understanding questions (plain prompt, as alignment uses);
    vendored in tests/data/bigbench. ``fill`` > 0: chosen and rejected repeat their text to over ``fill``
    tokens, so that TRL cuts every sequence at ``max_length = fill`` (the issue's full-length batches)."""

    task = load_task(ROOT / "tests" / "data" / "bigbench" / "sports_understanding.json")
    pairs = []
    for i, e in enumerate(task.examples[:n]):
        other = next(c for c in e.choices if c != e.answer)
        q = format_question(task, e)
        chosen = (f"The statement names an athlete and an action. I recall which sport the athlete plays and check "
                  f"whether the action belongs to it. It does{'' if e.answer == 'plausible' else ' not'}, so "
                  f"the statement is {e.answer}. <ans>{e.answer}</ans>")
        rejected = f"Hard to say. <ans>{other}</ans>"
        if fill:   # >= 3 tokens per repeat of either text, in any tokenizer
            chosen, rejected = (" ".join([t] * (fill // 3 + 1)) for t in (chosen, rejected))
        pairs.append(PreferencePair(id=f"b{i}", kind="rationale",
                                    prompt=tuple(rationale_prompt(task, q, "plain")), chosen=chosen,
                                    rejected=rejected, margin=1.0,
                                    chosen_ids=(f"c{i}",), rejected_ids=(f"r{i}",), task=task.name))
    return pairs


def random_config(name: str, layers: int | None = None) -> Any:
    """The transformers ``LlamaConfig`` of a random-weight shape (``layers`` overrides the depth)."""
    # heavy: transformers
    from transformers import LlamaConfig

    shape = {**RANDOM_SHAPES[name], **({"num_hidden_layers": layers} if layers else {})}
    return LlamaConfig(max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, bos_token_id=1,
                       eos_token_id=2, pad_token_id=2, **shape)


def model_ref(name: str, work: Path, layers: int | None = None, device: str = "cpu") -> Any:
    """The benchmark model as a ModelRef (random-weight shapes are built once into ``work``: in bf16 on
    the GPU when ``device`` is cuda, so an 8B model needs neither 32 GB of host RAM nor minutes of CPU init)."""

    if name == "default" or Path(name).exists():
        return resolve_model(name, model_dir())
    if name not in RANDOM_SHAPES:
        raise SystemExit(f"--model: unknown {name!r}; use default, {', '.join(RANDOM_SHAPES)} or a path")
    out = work / (f"{name}-{layers}l" if layers else name)
    if not (out / "config.json").is_file():
        # heavy: torch, transformers
        import torch
        from transformers import LlamaForCausalLM

        _, tok = load_hf(resolve_model("default", model_dir()), convert_dir=convert_dir())
        torch.manual_seed(0)
        cuda = device == "cuda"
        with torch.device("cuda" if cuda else "cpu"):
            model = LlamaForCausalLM(random_config(name, layers))
        model.to(torch.bfloat16 if cuda else torch.float32).save_pretrained(out)
        tok.save_pretrained(out)
        del model
    return ModelRef("hf", out, name)


# ---- one path, in a child process -------------------------------------------------------------------

def child(spec: dict[str, Any]) -> dict[str, Any]:
    # heavy: torch
    import torch

    torch.set_num_threads(spec["threads"])
    work = Path(spec["work"])
    ref = model_ref(spec["model"], work, spec["layers"], spec["device"])
    if spec["path"] == "build":   # the random model, built once in a process of its own, untimed
        return {"model": str(ref.path)}
    pairs = make_pairs(spec["pairs"], spec["fill"])
    out = Path(tempfile.mkdtemp(prefix=f"dpo-{spec['path']}-", dir=work))
    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    if spec["path"] in ("ours", "ours+margins"):
        cfg = AlignConfig(learning_rate=spec["lr"], beta=0.1, max_steps=spec["steps"], batch_size=spec["batch_size"],
                          warmup_ratio=0.1, max_length=spec["max_length"], device=spec["device"], seed=0,
                          gradient_checkpointing=spec["gradient_checkpointing"],
                          eval_pairs=64 if spec["path"] == "ours+margins" else 0,
                          holdout_share=0.0)   # train on the same pairs as the plain TRL path
        res = align(ref, pairs, cfg, out, convert_dir=convert_dir())
        train_s, tokens = res.metadata["seconds"]["train"], res.metadata["train_tokens"]
        train_cpu_s = res.metadata["seconds"]["train_cpu"]
        steps = res.metadata["steps"]
    else:
        # heavy: datasets, peft, trl
        from datasets import Dataset
        from peft import LoraConfig
        from trl import DPOConfig, DPOTrainer

        bf16 = cuda and torch.cuda.is_bf16_supported()
        # The usual TRL recipe on a GPU: the weights loaded in the training dtype, on the device.
        model, tok = load_hf(ref, convert_dir=convert_dir(), dtype=torch.bfloat16 if bf16 else None,
                             device="cuda" if cuda else "cpu")
        ds = Dataset.from_list([p.to_trl() for p in pairs])
        gc = spec["gradient_checkpointing"]
        args = DPOConfig(output_dir=str(out / "trainer"), beta=0.1, learning_rate=spec["lr"],
                         max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
                         warmup_ratio=0.1, lr_scheduler_type="cosine", max_length=spec["max_length"], seed=0,
                         use_cpu=not cuda, bf16=bf16, gradient_checkpointing=gc, logging_steps=1,
                         gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
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


def model_shape(name: str, layers: int | None) -> dict[str, int]:
    """Parameter count (tied embeddings once: they are the LM head's matmul), layers and width; a random
    shape is counted on the meta device (no weights), a real model is loaded."""
    # heavy: torch, transformers
    import torch
    from transformers import LlamaForCausalLM

    if name in RANDOM_SHAPES and not Path(name).exists():
        with torch.device("meta"):
            model = LlamaForCausalLM(random_config(name, layers))
    else:
        model, _ = load_hf(model_ref(name, Path(".")), convert_dir=convert_dir())
    return {"n_params": sum(p.numel() for p in model.parameters()), "layers": model.config.num_hidden_layers,
            "d": model.config.hidden_size, "vocab": model.config.vocab_size}


def flops_per_token(n_params: int) -> float:
    """Counted FLOPs per training token of LoRA-DPO: ``6·N`` policy forward + backward (the standard
    training convention) + ``2·N`` reference forward = ``8·N`` (attention scores left out, as in the
    issue's anchors)."""
    return 8 * n_params


def mfu(n_params: int, tok_per_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilization: ``8·N·tokens/s / peak`` (None without a peak, e.g. on a CPU)."""
    return flops_per_token(n_params) * tok_per_s / peak_flops if peak_flops else None


def gpu_peak_flops(gpu_name: str, override_tflops: float | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of ``gpu_name`` (``override_tflops`` wins; None for an unknown GPU)."""
    if override_tflops:
        return override_tflops * 1e12
    return next((v for k, v in GPU_PEAK_BF16.items() if k in gpu_name), None)


# ---- the parent: alternate the paths, report --------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default, smollm2-random, llama-1b-random or a path")
    ap.add_argument("--config", choices=list(CONFIG_BATCH),
                    help="Random-weight llama of that shape (nothing downloaded) with issue 17's batch shape.")
    ap.add_argument("--layers", type=int, help="Override a random shape's depth (smoke runs).")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Training device (bf16 on CUDA).")
    ap.add_argument("--pairs", type=int, help="Preference pairs (default: 32, or 4 batches with --config).")
    ap.add_argument("--steps", type=int, default=6, help="Optimizer steps per run.")
    ap.add_argument("--batch-size", type=int, help="Pairs per step (default 4, or the config's).")
    ap.add_argument("--max-length", type=int, help="Tokens per sequence (default 256, or the config's).")
    ap.add_argument("--lr", type=float, default=5e-5, help="Learning rate.")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="On both paths (e.g. for 8b).")
    ap.add_argument("--peak-tflops", type=float, help="The GPU's dense bf16 peak for the MFU (default: by name).")
    ap.add_argument("--repeats", type=int, default=2, help="Alternating rounds of ours/trl.")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 on a shared 2-core machine: 2 threads spin-wait each other).")
    ap.add_argument("--no-margins", action="store_true", help="Skip the ours+margins run.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.config and args.model:
        ap.error("--config and --model: give one")
    if args.layers is not None and args.layers < 1:
        ap.error("--layers: must be >= 1")
    model = args.config or args.model or "default"
    batch, length = CONFIG_BATCH.get(args.config or "", (4, 256))
    args.batch_size = args.batch_size or batch
    args.max_length = args.max_length or length
    args.pairs = args.pairs or (4 * args.batch_size if args.config else 32)
    if args.layers and model not in RANDOM_SHAPES:
        ap.error(f"--layers: only for a random shape ({', '.join(RANDOM_SHAPES)})")

    with tempfile.TemporaryDirectory(prefix="arte-bench-dpo-") as tmp:
        base = {"model": model, "layers": args.layers, "device": args.device, "pairs": args.pairs,
                "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr,
                "fill": args.max_length if args.config else 0, "gradient_checkpointing": args.gradient_checkpointing,
                "threads": args.threads, "work": tmp}
        shape = model_shape(model, args.layers)
        # ABBA order: a load that drifts during the run (a shared machine) biases neither path.
        order = [p for r in range(args.repeats) for p in (("ours", "trl") if r % 2 == 0 else ("trl", "ours"))]
        order += [] if args.no_margins else ["ours+margins"]
        runs: list[dict[str, Any]] = []
        for path in ["build", *order]:
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({**base, "path": path})],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"the {path} run failed (exit {proc.returncode})")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if path == "build":
                continue
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
    cuda = args.device == "cuda"
    gpu = runs[0].get("gpu")
    peak = gpu_peak_flops(gpu, args.peak_tflops) if cuda and gpu else None
    for p, row in rows.items():
        row["runs"] = sum(r["path"] == p for r in runs)
        row["tflops"] = flops_per_token(n_params) * row["tok_per_s"] / 1e12
        row["mfu"] = mfu(n_params, row["tok_per_s"], peak)
        row["peak_gpu_gib"] = row["peak_gpu_mib"] / 1024 if row["peak_gpu_mib"] is not None else None
    # Wall-clock on the device that matters; on a shared CPU, process CPU time is the steadier measure.
    clock = "total_cpu_s" if args.device == "cpu" else "total_s"
    rate = "tok_per_cpu_s" if args.device == "cpu" else "tok_per_s"
    overhead_total = rows["ours"][clock] / rows["trl"][clock] - 1
    overhead_train = rows["trl"][rate] / rows["ours"][rate] - 1
    overhead_wall = rows["ours"]["total_s"] / rows["trl"]["total_s"] - 1

    depth = f", {args.layers} layers" if args.layers else ""
    peak_s = f"{peak / 1e12:.0f} TFLOP/s" if peak else "(no GPU peak: null)"
    print(f"\nDPO + LoRA (r=8, q/k/v/o), {model}{depth} ({n_params / 1e6:.1f} M params) on {gpu or args.device}"
          f"{' bf16' if cuda else ''}, {args.pairs} pairs, {args.steps} steps x batch {args.batch_size} x 2 x "
          f"max_length {args.max_length}, {args.threads} thread(s); medians of {args.repeats} alternating runs; "
          f"MFU = 8*N*tok/s / {peak_s}\n")
    mem = "peak GPU GiB" if cuda else "peak RSS MiB"
    hdr = (f"{'path':14} {'total s':>8} {'cpu s':>8} {'train s':>8} {'tok/s':>9} {'tok/cpu-s':>10} {mem:>13} "
           f"{'TFLOP/s':>8} {'MFU':>6}")
    print(hdr)
    print("-" * len(hdr))
    for p, row in rows.items():
        m = f"{row['peak_gpu_gib']:13.1f}" if cuda else f"{row['peak_rss_mib']:13.0f}"
        mfu_s = "null" if row["mfu"] is None else f"{row['mfu']:.1%}"
        print(f"{p:14} {row['total_s']:8.1f} {row['total_cpu_s']:8.1f} {row['train_s']:8.1f} "
              f"{row['tok_per_s']:9.1f} {row['tok_per_cpu_s']:10.1f} {m} {row['tflops']:8.3f} {mfu_s:>6}")
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
               "mfu_formula": "8 * n_params * tok_per_s / peak_flops (6N policy fwd+bwd + 2N reference fwd)",
               "peak_flops": peak, "gpu": gpu,
               "rows": rows, "runs": runs, "config": {**vars(args), "model": model}, "model_shape": shape,
               "machine": machine_info(),
               "versions": versions(["torch", "transformers", "trl", "peft", "accelerate", "datasets", "arte-edge"])}
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
