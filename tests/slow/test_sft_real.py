"""On the real default model: a quick, strong LoRA adapter (a few dozen steps at a high learning rate on a
tiny, distinctive "pirate" dataset) trained with our SFT, exported to GGUF and run by llama.cpp, merged and
exported to ONNX and run by onnxruntime. The checks compare full next-token distributions (teacher forced)
between runtimes against the base model's own quantization noise floor, and show that the test fails
without the q/k permutation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.sft_real import (
    HELD_OUT,
    QA,
    TASK,
    THREADS,
    kl_top1,
    llama_logprobs,
    pirate,
    torch_logprobs,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(default_model, tmp_path_factory):
    import torch

    from arte.export import export_gguf_lora
    from arte.home import convert_dir
    from arte.sft import SFTConfig, run_sft
    from arte.sft_data import ChatFormat

    torch.set_num_threads(THREADS)
    out = tmp_path_factory.mktemp("sft")
    records = [pirate(i, q, a) for i, (q, a) in enumerate(QA)]
    cfg = SFTConfig(max_steps=16, batch_size=2, max_length=96, lr=4e-3, warmup_ratio=0.0, threads=THREADS,
                    save_every=8, seed=0)
    model, tok, res = run_sft(default_model, records, TASK.instruction, cfg, out / "sft", convert_dir=convert_dir())
    base_config = model.get_base_model().config
    gguf = export_gguf_lora(res.adapter_dir, out / "adapter.gguf", base_config)
    gguf_noperm = export_gguf_lora(res.adapter_dir, out / "noperm.gguf", base_config, permute=False)
    fmt = ChatFormat(tok, TASK.instruction)
    pairs = [fmt.train_example(pirate(100 + i, q, a)) for i, (q, a) in enumerate(HELD_OUT)]
    return {"model": model, "tok": tok, "result": res, "gguf": Path(gguf.path), "noperm": Path(gguf_noperm.path),
            "fmt": fmt, "seqs": [p + c for p, c in pairs], "n_prompt": [len(p) for p, _ in pairs], "out": out,
            "ref": default_model}


def test_sft_learns_the_distinctive_style(trained) -> None:
    res = trained["result"]
    assert res.status == "done" and res.steps == 16
    assert res.losses[-1] < 0.25 * res.losses[0]
    assert (Path(res.adapter_dir) / "adapter_model.safetensors").is_file()


def test_gguf_lora_on_llama_cpp_matches_torch_within_the_noise_floor(trained) -> None:
    ref, seqs, model = trained["ref"], trained["seqs"], trained["model"]
    t_lora, t_base = torch_logprobs(model, seqs), torch_logprobs(model, seqs, adapter=False)
    l_base = llama_logprobs(ref, seqs)
    l_lora = llama_logprobs(ref, seqs, trained["gguf"])
    l_noperm = llama_logprobs(ref, seqs, trained["noperm"])
    floor, floor_top = kl_top1(t_base, l_base)          # Q4_1 activation quantization, no adapter
    effect, _ = kl_top1(t_lora, t_base)                 # how much the adapter changes the model
    kl, top = kl_top1(t_lora, l_lora)
    kl_noperm, _ = kl_top1(t_lora, l_noperm)
    # On the positions that predict the completion (the trained ones) the match is tightest; the prompt
    # positions, never trained on, drift to flatter distributions where the same noise weighs more.
    n_prompt = trained["n_prompt"]
    floor_c, _ = kl_top1(t_base, l_base, n_prompt)
    kl_c, top_c = kl_top1(t_lora, l_lora, n_prompt)
    print(f"all positions: floor {floor:.4f}/{floor_top:.3f} effect {effect:.3f} lora {kl:.4f}/{top:.3f} "
          f"noperm {kl_noperm:.4f}; completion: floor {floor_c:.4f} lora {kl_c:.4f}/{top_c:.3f}")
    assert effect > 1.0, "the adapter must change the model a lot for the comparison to mean something"
    assert floor < 0.02
    assert kl < 3 * floor + 0.005 and top >= 0.9
    assert kl_c < 2 * floor_c + 0.002 and top_c >= 0.95
    assert kl_noperm > 10 * kl and kl_noperm > 0.1   # the permutation is what makes it match
    # the adapter's per-token effect on the actual next tokens, torch vs llama.cpp
    d_t, d_l = [], []
    for s, f, a, b, x, y in zip(seqs, n_prompt, t_lora, t_base, l_lora, l_base):
        idx, tgt = np.arange(f - 1, len(s) - 1), np.array(s[f:])
        d_t.append(a[idx, tgt] - b[idx, tgt])
        d_l.append(x[idx, tgt] - y[idx, tgt])
    assert np.corrcoef(np.concatenate(d_t), np.concatenate(d_l))[0, 1] > 0.99


def test_llama_cpp_student_with_lora_scores_like_torch(trained) -> None:
    """The same check through the Student API (LlamaCppStudent(lora_path=…, lora_scale=…))."""
    from arte.backends.hf import TorchStudent
    from arte.backends.llama import LlamaCppStudent

    ref, fmt = trained["ref"], trained["fmt"]
    prompts = [fmt.eval_prompt(q) for q, _ in HELD_OUT]
    conts = [fmt.encode(f" Arr matey! Me spyglass says {a}, yo ho! <ans>{a}</ans>") for _, a in HELD_OUT]
    torch_student = TorchStudent(trained["model"], trained["tok"], reuse=False)   # no KV across adapter states
    t = np.array([torch_student.loglik(p, [c])[0].logprob for p, c in zip(prompts, conts)])
    with trained["model"].disable_adapter():
        t0 = np.array([torch_student.loglik(p, [c])[0].logprob for p, c in zip(prompts, conts)])
    with LlamaCppStudent(ref.path, n_ctx=512, n_threads=THREADS, lora_path=trained["gguf"]) as ll:
        lp = np.array([ll.loglik(p, [c])[0].logprob for p, c in zip(prompts, conts)])
    with LlamaCppStudent(ref.path, n_ctx=512, n_threads=THREADS, lora_path=trained["gguf"], lora_scale=0.0) as ll:
        l0 = np.array([ll.loglik(p, [c])[0].logprob for p, c in zip(prompts, conts)])
    shift_t, shift_l = t - t0, lp - l0
    assert np.all(shift_t > 5)                              # the adapter makes the pirate answer far likelier
    assert np.abs(shift_l - shift_t).max() < 0.1 * np.abs(shift_t).min()


def test_onnx_student_of_the_merged_adapter_scores_drafts_like_torch(trained, bigbench_dir, data_dir) -> None:
    from arte.backends.hf import TorchStudent, load_hf
    from arte.backends.onnx import OnnxStudent, export_onnx
    from arte.drafts import read_drafts
    from arte.export import merge_lora
    from arte.home import convert_dir
    from arte.scoring import ScoringConfig, score_drafts
    from arte.tasks import load_task, split_task

    model, tok, out = trained["model"], trained["tok"], trained["out"]
    base, _ = load_hf(trained["ref"], convert_dir=convert_dir())
    merged_dir = merge_lora(base, trained["result"].adapter_dir, out / "merged", tok)
    del base
    onnx_dir = export_onnx(merged_dir, out / "onnx")
    task = load_task(bigbench_dir / "sports_understanding.json")
    items = list(split_task(task, seed=0, n_seeds=0, validation=0.5).validation[:4])
    drafts = read_drafts(data_dir / "drafts_sports_understanding.jsonl")[:2]
    onnx = OnnxStudent(onnx_dir, n_threads=THREADS)
    torch_student = TorchStudent(model, tok)
    try:
        r_onnx = score_drafts(onnx, task, drafts, items, ScoringConfig(mode="loglik"))
        r_torch = score_drafts(torch_student, task, drafts, items, ScoringConfig(mode="loglik"))
        assert np.array_equal(r_onnx.outcomes, r_torch.outcomes)
        from arte.prompts import scoring_prefix

        prefixes = sum(len(onnx.tokenize(scoring_prefix(task, d))) for d in drafts)
        assert onnx.tokens_evaluated < prefixes * len(items)   # each demonstration was evaluated once
        p = trained["fmt"].eval_prompt(HELD_OUT[0][0])
        c = [trained["fmt"].encode(f" Arr matey! Me spyglass says {HELD_OUT[0][1]}"), trained["fmt"].encode(" The")]
        for a, b in zip(onnx.loglik(p, c), torch_student.loglik(p, c)):
            assert a.logprob == pytest.approx(b.logprob, abs=2e-3)
        g_onnx = onnx.generate([p], max_new_tokens=16, stop=("</ans>",))[0]
        g_torch = torch_student.generate([p], max_new_tokens=16, stop=("</ans>",))[0]
        assert g_onnx.text == g_torch.text and "Arr" in g_onnx.text
    finally:
        onnx.close()
