"""A tiny Hugging Face model directory built here, nothing downloaded: a 2-layer random llama and a
byte-level BPE tokenizer (every byte encodable) with a ChatML template, saved with ``save_pretrained``.
Real enough for transformers, PEFT and TRL to load, train and checkpoint it in a second or two on a CPU.
"""

from __future__ import annotations

from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_CORPUS = ["Statement: the receiver caught the pass. Options: plausible, implausible",
           "Let's think step by step. A receiver catches passes in football. <ans>plausible</ans>",
           "Question: Answer: Think step by step. yes no maybe"]


def build_tiny_hf(out: Path, seed: int = 0) -> Path:
    """Write the tiny model and tokenizer to ``out`` (an HF directory) and return it."""
    # heavy: torch, transformers and tokenizers build the model and its tokenizer
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=320, show_progress=False, special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    hf_tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, eos_token_id=hf_tok.eos_token_id,
                      pad_token_id=hf_tok.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out
