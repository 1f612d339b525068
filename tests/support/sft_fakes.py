"""Fakes for the SFT tests: a character tokenizer with a ChatML template, and a tiny random llama.

``CharTokenizer`` maps ``<|im_start|>``/``<|im_end|>`` to ids 1/2 and every other character to
``3 + (ord(c) % 250)``: enough to check formats, masking and packing without a real vocabulary.
"""

from __future__ import annotations

import re
from typing import Any

SPECIAL = {"<|im_start|>": 1, "<|im_end|>": 2}
VOCAB = 256


class CharTokenizer:
    pad_token_id = 2
    eos_token_id = 2

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        text = ""
        if messages[0]["role"] != "system":
            text += "<|im_start|>system\nBe helpful<|im_end|>\n"
        for m in messages:
            text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return text

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids: list[int] = []
        for part in re.split(r"(<\|im_start\|>|<\|im_end\|>)", text):
            if part in SPECIAL:
                ids.append(SPECIAL[part])
            else:
                ids += [3 + (ord(c) % 250) for c in part]
        return {"input_ids": ids}

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in SPECIAL.items()}
        return "".join(inv[i] if i in inv else chr(i - 3) for i in ids)


def tiny_llama(seed: int = 0, vocab: int = VOCAB) -> Any:
    """A 2-layer llama with GQA (4 heads, 2 KV heads) and tied embeddings, random weights (initialized wide
    enough that its logits can move: at the usual 0.02 a 32-wide head cannot leave the uniform distribution)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, attn_implementation="sdpa", initializer_range=0.3)
    return LlamaForCausalLM(cfg).eval()
