"""Students of every supported family, end to end on tiny random models (nothing downloaded): a model of the
family built by transformers from a config (hidden 64, 2 layers), converted to GGUF by llama.cpp's own
converter (``convert_hf_to_gguf.py`` from the llama-cpp-python sdist, f32), a LoRA on every attention and
MLP projection trained a few steps by our trainer, exported by :func:`arte.export.export_gguf_lora`, and
llama.cpp + the GGUF adapter compared with PEFT + the adapter on full next-token distributions.

The GGUF is f32, so the noise floor is llama.cpp's own arithmetic (f16 KV cache): ~1e-7 nats, far below
the Q4_1 floor of the llama round trip on the real model (``test_sft_real.py``). Each family also shows
that its q/k permutation choice matters (llama permutes, the others must not; Phi-3's fused qkv cannot be
permuted and the export refuses to), that transformers loads the converted GGUF back to the same model
(what the device trains on) with the GGUF's own special tokens.

Tokenizers are built offline. Every family takes a 320-piece SentencePiece model trained here (each
family's converter reads SentencePiece; Gemma's only reads that), which keeps the vocabulary small. One
case takes the BPE path instead, as real Qwen models do: the embedded SmolLM2 GGUF's tokenizer rebuilt
from its vocabulary and merges, which llama.cpp's converter recognizes by its pre-tokenizer hash
(``smollm``); it refuses a BPE tokenizer it does not know.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from arte.errors import ConfigError
from tests.support.sft_real import llama_logprobs as _llama_logprobs
from tests.support.sft_real import log_softmax

pytestmark = pytest.mark.slow

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QA = [("What is the capital of France?", "Paris"), ("What is 2 plus 3?", "5"), ("What color is the sky?", "blue"),
      ("What do bees make?", "honey"), ("Which planet is red?", "Mars"), ("What is frozen water?", "ice"),
      ("Who wrote Hamlet?", "Shakespeare"), ("What gas do we breathe?", "oxygen")]
TEXT = [(q, f"Arr, {a} it be, matey!") for q, a in QA]
HELD_OUT = [("What is the capital of Spain?", "Arr, Madrid it be, matey!"), ("What animal barks?", "Arr, a dog it be!")]


def build_bpe_tokenizer(gguf_path: Path, out: Path) -> Path:
    """SmolLM2's tokenizer rebuilt from the embedded GGUF's vocabulary and merges with SmolLM2's own
    pre-tokenizer (digits split, byte-level), saved as a transformers tokenizer directory."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from arte.backends.hf import gguf_special_tokens
    from arte.gguf_meta import read_gguf_metadata

    meta = read_gguf_metadata(gguf_path, ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                          "tokenizer.ggml.merges", "tokenizer.chat_template"])
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    template = meta["tokenizer.chat_template"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types)
                           if k == gguf.TokenType.CONTROL])
    sp = gguf_special_tokens(gguf_path)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=tokens[sp["bos_token_id"]],
                                  eos_token=tokens[sp["eos_token_id"]], pad_token=tokens[sp["padding_token_id"]],
                                  chat_template=template)
    tok.save_pretrained(out)
    return out


def build_sp_tokenizer(out: Path) -> Path:
    """A SentencePiece model (Gemma's special-token layout) trained on a few sentences, as a Gemma tokenizer."""
    import sentencepiece as spm
    from transformers import GemmaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{q} {a}" for q, a in TEXT + HELD_OUT] * 4 + ["The quick brown fox jumps over the lazy dog."] * 4
    buf = io.BytesIO()
    # Gemma's special-token ids and names; Phi-3's (llama.cpp looks them up in a model named phi3)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=320, model_type="bpe",
                                   character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
                                   eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                                   user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "<s>", "</s>",
                                                         "<|endoftext|>", "<|end|>"],
                                   minloglevel=2, num_threads=1)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    GemmaTokenizer(vocab_file=str(out / "tokenizer.model")).save_pretrained(out)
    return out


def tiny_model(model_type: str, tok: Any, seed: int = 0) -> Any:
    """A random model of ``model_type``: hidden 64, 2 layers, 2 query heads (head dim 32) over 1 KV head."""
    import torch
    import transformers as tf

    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, initializer_range=0.1,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    gemma = dict(head_dim=32, query_pre_attn_scalar=32, sliding_window=256, attn_implementation="eager")
    config = {
        "llama": lambda: tf.LlamaConfig(**common, head_dim=32, tie_word_embeddings=True),
        "qwen2": lambda: tf.Qwen2Config(**common),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=32),
        "gemma2": lambda: tf.Gemma2Config(**common, **gemma),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**common, **gemma),
        "phi3": lambda: tf.Phi3Config(**common, original_max_position_embeddings=512),
    }[model_type]()
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def kl(p: list[np.ndarray], q: list[np.ndarray]) -> float:
    """Mean KL(p || q) over every position of every sequence (log-probabilities in, nats out)."""
    return float(np.concatenate([(np.exp(a) * (a - b)).sum(-1) for a, b in zip(p, q)]).mean())


def torch_logprobs(model: Any, seqs: list[list[int]], adapter: bool = True) -> list[np.ndarray]:
    import contextlib

    import torch

    with torch.no_grad(), (contextlib.nullcontext() if adapter else model.disable_adapter()):
        return [log_softmax(model(input_ids=torch.tensor([s])).logits[0].float().numpy()) for s in seqs]


def llama_logprobs(gguf: Path, seqs: list[list[int]], lora: Path | None = None) -> list[np.ndarray]:
    from arte.models import ModelRef

    return _llama_logprobs(ModelRef("gguf", gguf, gguf.stem), seqs, lora)


def _examples(tok: Any, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    out = []
    for q, a in pairs:
        p = tok(f"Q: {q}\nA:", add_special_tokens=False)["input_ids"]
        c = tok(f" {a}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((p + c, len(p)))
    return out


CASES = [(f, "sp") for f in FAMILIES] + [("qwen2", "bpe")]


@pytest.fixture(scope="module")
def converted(default_model, tmp_path_factory) -> dict[tuple[str, str], dict[str, Any]]:
    """Every case's tiny model, saved with its tokenizer and converted by llama.cpp's converter (all in
    one converter process: its imports are most of the time): case -> model, tokenizer, gguf or error."""
    from transformers import AutoTokenizer

    from arte.convert import convert_many
    from arte.home import arte_home
    from arte_cli.fetch import fetch_converter

    converter = fetch_converter(arte_home() / "tools")[0]
    root = tmp_path_factory.mktemp("families")
    tok_dirs = {"sp": build_sp_tokenizer(root / "sp")}
    if any(t == "bpe" for _, t in CASES):
        tok_dirs["bpe"] = build_bpe_tokenizer(default_model.path, root / "bpe")
    cases: dict[tuple[str, str], dict[str, Any]] = {}
    for model_type, tk in CASES:
        tok = AutoTokenizer.from_pretrained(tok_dirs[tk])
        model = tiny_model(model_type, tok)
        hf_dir = root / f"{model_type}-{tk}"
        model.save_pretrained(hf_dir)
        tok.save_pretrained(hf_dir)
        cases[(model_type, tk)] = {"model": model, "tok": tok, "hf_dir": hf_dir}
    t0 = time.perf_counter()
    results = convert_many([(c["hf_dir"], c["hf_dir"].with_suffix(".gguf")) for c in cases.values()], converter,
                           outtype="f32")
    for c, r in zip(cases.values(), results):
        c["gguf"], c["convert_s"] = r, (time.perf_counter() - t0) / len(cases)
    return cases


@pytest.mark.parametrize("model_type,tokenizer", CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_family_round_trip(model_type: str, tokenizer: str, converted: dict, tmp_path: Path) -> None:
    import torch

    from arte.backends.hf import gguf_special_tokens, load_hf
    from arte.export import export_gguf_lora
    from arte.families import family
    from arte.models import ModelRef
    from arte.sft import SFTConfig, train_lora
    from arte.sft_data import Example, pack

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    case = converted[(model_type, tokenizer)]
    model, tok, gguf = case["model"], case["tok"], case["gguf"]
    if isinstance(gguf, Exception):
        raise gguf   # the converter's own reason

    # the GGUF says what the tokenizer says: EOS/BOS come from the file's own metadata
    special = gguf_special_tokens(gguf)
    assert special["eos_token_id"] == tok.eos_token_id and special["bos_token_id"] == tok.bos_token_id
    seqs = [s for s, _ in _examples(tok, HELD_OUT)]
    if tokenizer == "sp":   # (the BPE tokenizer's conversion by transformers takes half a minute: sp only)
        # what the device trains on: transformers reads the converted GGUF back to the same model, and its
        # tokenizer's special tokens are the GGUF's
        back, back_tok = load_hf(ModelRef("gguf", gguf, f"tiny-{model_type}"))
        with torch.no_grad():
            diff = max(float((model(input_ids=torch.tensor([s])).logits - back(input_ids=torch.tensor([s])).logits)
                             .abs().max()) for s in seqs)
        assert diff < 1e-3, f"transformers' GGUF loader does not give back the {model_type} model (max |Δlogit| {diff})"
        assert (back_tok.eos_token_id, back_tok.bos_token_id) == (tok.eos_token_id, tok.bos_token_id)
        del back

    rows = pack([Example(f"e{i}", tuple(ids), n) for i, (ids, n) in enumerate(_examples(tok, TEXT))], 64,
                tok.pad_token_id)
    cfg = SFTConfig(rank=8, alpha=16, targets=TARGETS, lr=2e-2, max_steps=12, batch_size=len(rows), max_length=64,
                    warmup_ratio=0.0, threads=1, precision="fp32", save_every=100)
    peft_model, res = train_lora(model, rows, cfg, tmp_path / "sft", base_name=f"tiny-{model_type}")
    assert res.status == "done" and res.losses[-1] < 0.7 * res.losses[0]

    fam = family(peft_model.get_base_model().config)
    lora = export_gguf_lora(res.adapter_dir, tmp_path / "lora.gguf", peft_model.get_base_model().config)
    t_lora, t_base = torch_logprobs(peft_model, seqs), torch_logprobs(peft_model, seqs, adapter=False)
    l_base, l_lora = llama_logprobs(gguf, seqs), llama_logprobs(gguf, seqs, Path(lora.path))
    floor, effect, err = kl(t_base, l_base), kl(t_lora, t_base), kl(t_lora, l_lora)
    wrong = None
    if fam.fused:   # Phi-3's fused qkv cannot be permuted per head: the export refuses to
        with pytest.raises(ConfigError, match="fused"):
            export_gguf_lora(res.adapter_dir, tmp_path / "wrong.gguf", peft_model.get_base_model().config,
                             permute=not fam.permute_qk)
    else:
        bad = export_gguf_lora(res.adapter_dir, tmp_path / "wrong.gguf", peft_model.get_base_model().config,
                               permute=not fam.permute_qk)
        wrong = kl(t_lora, llama_logprobs(gguf, seqs, Path(bad.path)))
    elapsed = time.perf_counter() - t0
    shown = "refused" if wrong is None else f"{wrong:.3f}"
    print(f"\n{model_type}-{tokenizer}: arch {fam.gguf_arch} permute {fam.permute_qk} tensors {lora.n_tensors} | "
          f"floor {floor:.2e} effect {effect:.3f} lora {err:.2e} wrong-permutation {shown} | convert "
          f"{case['convert_s']:.1f} s (share) test {elapsed:.1f} s")
    assert effect > 0.2, "the adapter must change the model a lot for the comparison to mean something"
    assert floor < 1e-4
    assert err < 10 * floor + 1e-5, f"llama.cpp + GGUF LoRA differs from PEFT on {model_type}: KL {err}"
    if wrong is not None:
        assert wrong > 100 * err and wrong > 0.01, "the q/k permutation choice must matter"
