"""LoRA SFT on the device: our trainer vs a plain PEFT + transformers loop, tokens/s and peak memory.

Question: how much faster, and how much leaner, is ``arte.sft`` (only labelled positions reach the LM
head, in chunks, gradient computed in the same pass; micro-batches chosen to fit a memory budget) than
the plain loop a practitioner would write (``model(input_ids, labels=…)``: the full
batch × length × 49,152 logits, log-softmax and its gradient, one forward for the whole batch)?

Same run, same model (the default SmolLM2-135M, dequantized from its GGUF), same LoRA (r 8, alpha 16,
q/k/v/o), same optimizer and learning rate, same packed rows (:func:`arte.sft_data.pack`, 4 × 256 per
step) in the same order. The plain loop pads each batch to its longest row (what HF collators do); ours
trims each micro-batch to its longest row. Tokens/s counts real (non-padding) tokens, over steps 2..N.

Each variant runs in its own subprocess (so their peak RSS, the whole process's ``VmHWM`` including the
model load, do not pollute each other), alternating over ``--rounds`` (the machine may be shared;
medians are reported). ``OMP_WAIT_POLICY=PASSIVE`` is set for every variant by default: with the default
active spin-wait, two OpenMP threads on a busy 2-core machine ran 5-9x slower than one. Tokens per
CPU-second are reported too, as they are steadier than wall time on a shared machine.

Variants: ``plain`` (the loop above, fp32), ``ours`` (``train_lora`` in fp32 with ``memory_budget_mb``,
default 1536), ``ours-nobudget`` (fp32, one micro-batch of 4 rows: the chunked loss alone), ``ours-bf16`` and
``ours-bf16-nobudget`` (the same with ``precision="bf16"``: bf16 matmuls, see :mod:`arte.precision`), and,
on request, ``plain-autocast`` (the plain loop under ``torch.autocast("cpu", dtype=torch.bfloat16)``, what a
practitioner would try first). The bf16 variants' loss curves are compared with their fp32 counterparts
(same seed, same batches): ``max_loss_diff`` in the JSON. The machine's bf16 flags (``/proc/cpuinfo``) and
what ``precision="auto"`` resolves to are recorded with the machine.

Usage: ``python benchmarks/sft.py [--steps 5] [--rounds 2] [--threads 2]``. Human table, then a last line
of JSON with the numbers, versions and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import contextlib

from arte.backends.hf import load_hf
from arte.drafts import read_drafts
from arte.home import convert_dir, model_dir
from arte.models import resolve_model
from arte.precision import BF16_FLAGS, host_cpu_flags, resolve_precision
from arte.sft import SFTConfig, peak_rss_mb, train_lora
from arte.sft_data import ChatFormat, PackedRow, batch_order, encode_records, pack, templated_records
from arte.tasks import load_task, split_task

DEV_DATA = ROOT / "tests" / "data" / "bigbench"
VARIANTS = ("plain", "ours", "ours-nobudget", "ours-bf16", "ours-bf16-nobudget", "plain-autocast")
DEFAULT_VARIANTS = VARIANTS[:5]
FP32_OF = {"ours-bf16": "ours", "ours-bf16-nobudget": "ours-nobudget", "plain-autocast": "plain"}
LORA = dict(rank=8, alpha=16.0, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
LR = 2e-4


def build_rows(path: Path, max_length: int) -> dict:
    """Tailored-format records: the hand-written development drafts (teacher-like rationales) plus
    templated records of both tasks, packed into rows of ``max_length``."""

    ref = resolve_model("default", model_dir())
    _, tok = load_hf(ref, convert_dir=convert_dir())
    examples = []
    for name in ("sports_understanding", "navigate"):
        task = load_task(DEV_DATA / f"{name}.json")
        recs = read_drafts(ROOT / "tests" / "data" / f"drafts_{name}.jsonl")
        recs += templated_records(task, split_task(task, seed=0, n_seeds=0, validation=0.5).validation[:40])
        examples += encode_records(ChatFormat(tok, task.instruction), recs, max_length)[0]
    rows = pack(examples, max_length, tok.pad_token_id)
    data = {"rows": [[r.input_ids, r.position_ids, r.labels, r.n_tokens] for r in rows],
            "n_examples": len(examples),
            "label_fraction": sum(len(e.ids) - e.n_prompt for e in examples) / sum(len(e.ids) for e in examples),
            "fill": sum(r.n_tokens for r in rows) / (len(rows) * max_length)}
    path.write_text(json.dumps(data))
    return data


def worker(variant: str, rows_path: Path, steps: int, threads: int, batch: int, budget: int) -> dict:
    """Train ``steps`` steps in this process; returns timings and peak RSS."""
    import torch

    torch.set_num_threads(threads)

    raw = json.loads(rows_path.read_text())["rows"]
    rows = [PackedRow(tuple(i), tuple(p), tuple(lab), (), n) for i, p, lab, n in raw]
    model, _ = load_hf(resolve_model("default", model_dir()), convert_dir=convert_dir())
    marks: list[tuple[float, float]] = []
    losses: list[float] = []
    order = [b for e in range(2) for b in batch_order(len(rows), batch, seed=0, epoch=e)][:steps]
    tokens = [sum(rows[i].n_tokens for i in b) for b in order]
    if variant.startswith("plain"):

        from peft import LoraConfig, get_peft_model
        from transformers import get_cosine_schedule_with_warmup

        peft_model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                                      target_modules=list(LORA["targets"]), task_type="CAUSAL_LM"))
        peft_model.train()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=LR)
        sched = get_cosine_schedule_with_warmup(opt, 0, steps)
        ids = torch.tensor([r.input_ids for r in rows])
        pos = torch.tensor([r.position_ids for r in rows])
        # transformers shifts labels itself: label[j] is predicted at j-1; ours are pre-shifted
        lab = torch.tensor([(-100,) + r.labels[:-1] for r in rows])
        marks.append((time.perf_counter(), time.process_time()))
        for b in order:
            width = max(rows[i].n_tokens for i in b)   # dynamic padding to the batch's longest row
            with (torch.autocast("cpu", dtype=torch.bfloat16) if variant == "plain-autocast"
                  else contextlib.nullcontext()):
                out = peft_model(input_ids=ids[b, :width], position_ids=pos[b, :width], labels=lab[b, :width])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            marks.append((time.perf_counter(), time.process_time()))
    else:
        cfg = SFTConfig(**LORA, lr=LR, warmup_ratio=0.0, max_steps=steps, batch_size=batch,
                        max_length=len(rows[0].input_ids), threads=threads, save_every=10_000,
                        memory_budget_mb=None if variant.endswith("nobudget") else budget,
                        grad_accumulation=1 if variant.endswith("nobudget") else None,
                        precision="bf16" if "bf16" in variant else "fp32")

        def progress(step: int, total: int, loss: float) -> None:
            marks.append((time.perf_counter(), time.process_time()))
            losses.append(loss)

        with tempfile.TemporaryDirectory() as tmp:
            marks.append((time.perf_counter(), time.process_time()))
            _, res = train_lora(model, rows, cfg, tmp, progress=progress)
        plan = res.plan
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    timed = slice(1, None)   # step 1 warms up allocators and caches
    n_tok = sum(tokens[timed])
    return {"variant": variant, "steps": steps, "tokens_per_step": tokens, "step_wall_s": [round(x, 3) for x in wall],
            "tokens_per_s": round(n_tok / sum(wall[timed]), 2), "tokens_per_cpu_s": round(n_tok / sum(cpu[timed]), 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "losses": [round(x, 4) for x in losses],
            "plan": None if variant.startswith("plain") else {"micro_batch": plan.micro_batch,
                                                     "grad_accumulation": plan.grad_accumulation,
                                                     "gradient_checkpointing": plan.gradient_checkpointing,
                                                     "estimated_peak_mb": plan.estimated_peak_mb}}


def machine() -> dict:
    import peft
    import torch
    import transformers

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass

    flags = host_cpu_flags()
    shown = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c", "bf16"))
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": shown,
            "bf16_flags": [f for f in BF16_FLAGS if f in flags], "auto_precision": resolve_precision("auto", flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "platform": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per variant (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of every variant; medians reported")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--batch", type=int, default=4, help="rows per optimizer step")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per packed row")
    ap.add_argument("--memory-budget", type=int, default=1536, help="MiB, for the 'ours' variant")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--no-passive", action="store_true", help="keep OpenMP's default (active) wait policy")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.rows, a.steps, a.threads, a.batch, a.memory_budget)))
        return
    variants = [v for v in a.variants.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = Path(tmp) / "rows.json"
        data = build_rows(rows_path, a.max_length)
        env = dict(os.environ)
        if not a.no_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        load_before = os.getloadavg()
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(a.rounds):
            for v in variants:
                cmd = [sys.executable, __file__, "--worker", v, "--rows", str(rows_path), "--steps", str(a.steps),
                       "--threads", str(a.threads), "--batch", str(a.batch), "--memory-budget", str(a.memory_budget)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    sys.exit(f"worker {v} failed:\n{out.stderr[-3000:]}")
                runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1} {v}: {runs[v][-1]['tokens_per_s']} tok/s, "
                      f"{runs[v][-1]['peak_rss_mb']} MiB", file=sys.stderr, flush=True)
        load_after = os.getloadavg()
    summary = {}
    for v, rs in runs.items():
        summary[v] = {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs),
                      "tokens_per_cpu_s": statistics.median(x["tokens_per_cpu_s"] for x in rs),
                      "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
                      "final_loss": statistics.median(x["losses"][-1] for x in rs),
                      "plan": rs[0]["plan"], "runs": rs}
    for v, ref in FP32_OF.items():   # per-step loss, bf16 vs fp32, same seed and batches (first rounds)
        if v in runs and ref in runs:
            summary[v]["max_loss_diff"] = round(max(abs(x - y) for x, y in zip(runs[v][0]["losses"],
                                                                                runs[ref][0]["losses"])), 4)
    base = summary.get("plain")
    print(f"LoRA SFT, SmolLM2-135M, batch {a.batch} x {a.max_length}, {a.steps} steps (first untimed), "
          f"{a.threads} threads, {a.rounds} rounds, label fraction {data['label_fraction']:.2f}, row fill {data['fill']:.2f}")
    print(f"{'variant':19} {'tok/s':>8} {'tok/cpu-s':>10} {'peak RSS MiB':>13} {'x plain (wall)':>15} "
          f"{'x plain (cpu)':>14} {'max |dloss|':>12}  plan")
    for v, s in summary.items():
        rw = s["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        rc = s["tokens_per_cpu_s"] / base["tokens_per_cpu_s"] if base else float("nan")
        s["ratio_wall"], s["ratio_cpu"] = round(rw, 3), round(rc, 3)
        plan = "" if not s["plan"] else (f"micro-batch {s['plan']['micro_batch']} x {s['plan']['grad_accumulation']}"
                                         f"{', checkpointing' if s['plan']['gradient_checkpointing'] else ''}")
        diff = f"{s['max_loss_diff']:12.4f}" if "max_loss_diff" in s else f"{'':12}"
        print(f"{v:19} {s['tokens_per_s']:8.1f} {s['tokens_per_cpu_s']:10.1f} {s['peak_rss_mb']:13.0f} {rw:15.2f} "
              f"{rc:14.2f} {diff}  {plan}")
    print(json.dumps({"benchmark": "sft", "batch": a.batch, "max_length": a.max_length, "steps": a.steps,
                      "threads": a.threads, "rounds": a.rounds, "omp_wait_policy": env.get("OMP_WAIT_POLICY", "default"),
                      "memory_budget_mb": a.memory_budget, "label_fraction": round(data["label_fraction"], 3),
                      "row_fill": round(data["fill"], 3), "n_examples": data["n_examples"],
                      "load_average_before": load_before, "load_average_after": load_after,
                      "results": summary, "machine": machine()}))


if __name__ == "__main__":
    main()
