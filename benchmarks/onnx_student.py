"""How fast is the ONNX Runtime student, against the torch student it is exported from and llama.cpp?

Question: what does running the (LoRA-merged) student on onnxruntime cost per token, for prompt
evaluation and for greedy decoding, and does it score the same as torch? Same model (the default
SmolLM2-135M; the ONNX export is of its dequantized weights, like the torch student; llama.cpp runs the
Q4_1 GGUF), same prompts, same thread count, one process, backends measured one after the other.

Measured: prefill ms for a ~60-token prompt plus a 15-token continuation (``loglik``, from scratch),
greedy decode ms/token over ``--new`` tokens (``generate`` minus a prefill), and the largest log-probability difference between ONNX and
torch on the prompt's continuation. The ONNX export (~30 s, ~3 GB) is cached in ``--export-dir``.

Usage: ``python benchmarks/onnx_student.py [--threads 2] [--new 64]``. Human table, then a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from arte.backends.hf import TorchStudent
from arte.backends.llama import LlamaCppStudent
from arte.backends.onnx import OnnxStudent
from arte.home import convert_dir, model_dir
from arte.models import resolve_model

PROMPT = ("Determine whether an artificially constructed sentence relating to sports is plausible or implausible. "
          "Include your final answer with the tag <ans> and </ans>.\n\nQuestion: Statement: Mike Trout was out at "
          "first\nOptions: plausible, implausible\nAnswer: Let's think step by step. The sentence names an athlete "
          "and an action. I check which sport the athlete plays.")


def measure(student, prompt: list[int], cont: list[int], new: int, repeats: int) -> dict:
    """Students are opened with ``reuse=False``: every call evaluates its prompt from scratch, so the
    loglik call times a prefill and the generate call a prefill plus ``new`` decode steps."""
    pre, gen = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        lp = student.loglik(prompt, [cont])[0].logprob
        pre.append(time.perf_counter() - t)
        t = time.perf_counter()
        g = student.generate([prompt], max_new_tokens=new)[0]
        gen.append(time.perf_counter() - t)
    per_token = max(min(gen) - min(pre), 1e-9) / max(g.n_tokens, 1)
    return {"prefill_ms": round(1000 * min(pre), 1), "decode_ms_per_token": round(1000 * per_token, 2),
            "decode_tok_s": round(1 / per_token, 1), "n_new": g.n_tokens, "logprob": lp}


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for every backend")
    ap.add_argument("--new", type=int, default=64, help="greedy tokens to decode")
    ap.add_argument("--repeats", type=int, default=3, help="best of N")
    ap.add_argument("--export-dir", type=Path, default=None, help="where the ONNX export is cached "
                    "(default: the model dir's hf/ cache)")
    a = ap.parse_args()
    import onnxruntime
    import torch
    import transformers

    torch.set_num_threads(a.threads)

    ref = resolve_model("default", model_dir())
    t = time.perf_counter()
    onnx = OnnxStudent.from_ref(ref, n_threads=a.threads, export_dir=a.export_dir or convert_dir(),
                                convert_dir=convert_dir(), reuse=False)
    open_s = time.perf_counter() - t
    prompt = onnx.tokenize(PROMPT)
    cont = onnx.tokenize(" The action fits, so it is plausible. <ans>plausible</ans>")
    rows = {"onnx": measure(onnx, prompt, cont, a.new, a.repeats)}
    onnx.close()
    rows["torch"] = measure(TorchStudent.from_ref(ref, convert_dir=convert_dir(), reuse=False), prompt, cont, a.new,
                            a.repeats)
    with LlamaCppStudent(ref.path, n_threads=a.threads, reuse=False) as ll:
        rows["llama.cpp (Q4_1)"] = measure(ll, prompt, cont, a.new, a.repeats)
    diff = abs(rows["onnx"]["logprob"] - rows["torch"]["logprob"])
    print(f"{len(prompt)}-token prompt, {a.new} greedy tokens, {a.threads} threads, best of {a.repeats}; "
          f"ONNX opened (export cached) in {open_s:.1f} s; |logprob onnx - torch| = {diff:.2e}")
    print(f"{'backend':18} {'prefill ms':>10} {'decode ms/tok':>14} {'tok/s':>7}")
    for k, r in rows.items():
        print(f"{k:18} {r['prefill_ms']:10.1f} {r['decode_ms_per_token']:14.2f} {r['decode_tok_s']:7.1f}")
    print(json.dumps({"benchmark": "onnx_student", "prompt_tokens": len(prompt), "threads": a.threads,
                      "results": rows, "logprob_diff_onnx_torch": diff,
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                      "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                  "python": platform.python_version(), "torch": torch.__version__,
                                  "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
                                  "load_average": os.getloadavg()}}))


if __name__ == "__main__":
    main()
