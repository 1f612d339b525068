"""GGUF metadata without the weights: the header reader, the base config the export needs, the special
tokens the GGUF's own metadata names (not a hard-coded ``<|im_end|>``) and the config values transformers'
GGUF loader would leave at its defaults."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from arte.errors import ConfigError, ModelError

gguf = pytest.importorskip("gguf")


def _write_base(path: Path, arch: str, block_count: int = 3, **kv: object) -> Path:
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(block_count)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_embedding_length(64)
    for key, value in kv.items():
        getattr(w, f"add_{key}")(value)
    w.add_token_list(["<pad>", "<s>", "</s>", "a", "b"])
    w.add_tensor("token_embd.weight", np.zeros((5, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_the_base_config_comes_from_a_gguf_header(tmp_path: Path) -> None:
    from arte.families import gguf_model_config
    from arte.gguf_meta import read_gguf_metadata

    base = _write_base(tmp_path / "b.gguf", "qwen2", bos_token_id=1, eos_token_id=2, key_length=8)
    assert gguf_model_config(base) == {"model_type": "qwen2", "num_attention_heads": 8, "num_key_value_heads": 2,
                                       "num_hidden_layers": 3}
    meta = read_gguf_metadata(base, ["tokenizer.ggml.tokens", "tokenizer.ggml.eos_token_id", "qwen2.block_count"])
    assert meta == {"tokenizer.ggml.tokens": ["<pad>", "<s>", "</s>", "a", "b"], "tokenizer.ggml.eos_token_id": 2,
                    "qwen2.block_count": 3}
    assert "tokenizer.ggml.tokens" not in read_gguf_metadata(base)   # arrays only when asked for
    with pytest.raises(ConfigError, match="'mamba'") as e:
        gguf_model_config(_write_base(tmp_path / "m.gguf", "mamba"))
    assert e.value.field == "model_type"
    (tmp_path / "cut.gguf").write_bytes(base.read_bytes()[:40])
    with pytest.raises(ModelError, match="truncated"):
        read_gguf_metadata(tmp_path / "cut.gguf")
    (tmp_path / "no.gguf").write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ModelError, match="not a GGUF"):
        read_gguf_metadata(tmp_path / "no.gguf")


class FakeTokenizer:
    """The attributes of a transformers tokenizer that ``fix_gguf_tokenizer`` touches."""

    def __init__(self, vocab: list[str]) -> None:
        self.vocab = vocab
        self.eos_token, self.bos_token, self.pad_token = vocab[1], vocab[1], None   # transformers 4.57's mistakes
        self.add_bos_token = True

    def __len__(self) -> int:
        return len(self.vocab)

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.vocab[i]

    def _id(self, t: str | None) -> int | None:
        return None if t is None else self.vocab.index(t)

    eos_token_id = property(lambda self: self._id(self.eos_token))
    pad_token_id = property(lambda self: self._id(self.pad_token))


def _model() -> SimpleNamespace:
    return SimpleNamespace(generation_config=SimpleNamespace(), config=SimpleNamespace())


def test_special_tokens_come_from_the_gguf_metadata(tmp_path: Path) -> None:
    from arte.backends.hf import fix_gguf_tokenizer, gguf_special_tokens

    vocab = ["<pad>", "<start>", "<eos>", "<end_of_turn>", "x"]
    base = _write_base(tmp_path / "g.gguf", "gemma2", bos_token_id=1, eos_token_id=2, eot_token_id=3,
                       pad_token_id=0, add_bos_token=True)
    special = gguf_special_tokens(base)
    assert special == {"bos_token_id": 1, "eos_token_id": 2, "eot_token_id": 3, "padding_token_id": 0,
                       "add_bos_token": True}
    tok, model = FakeTokenizer(vocab), _model()
    fix_gguf_tokenizer(tok, model, special)
    assert (tok.eos_token, tok.bos_token, tok.pad_token, tok.add_bos_token) == ("<eos>", "<start>", "<pad>", True)
    assert model.generation_config.eos_token_id == [2, 3]   # llama.cpp stops at EOS and EOT
    assert model.config.eos_token_id == 2 and model.config.pad_token_id == 0
    # SmolLM2's layout: ChatML, EOS <|im_end|>, padding = EOS, no BOS added; nothing about it is hard-coded
    tok, model = FakeTokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]), _model()
    fix_gguf_tokenizer(tok, model, {"bos_token_id": 1, "eos_token_id": 2, "padding_token_id": 1,
                                    "add_bos_token": False})
    assert (tok.eos_token, tok.pad_token, tok.add_bos_token) == ("<|im_end|>", "<|im_end|>", False)
    assert model.generation_config.eos_token_id == 2


def test_the_embedded_model_names_im_end_as_eos(default_model) -> None:
    from arte.backends.hf import gguf_special_tokens

    assert gguf_special_tokens(default_model.path) == {"bos_token_id": 1, "eos_token_id": 2, "padding_token_id": 2,
                                             "add_bos_token": False}


@pytest.mark.parametrize("arch, layers, expected", [
    ("qwen3", 3, {"head_dim": 32}),
    ("gemma2", 3, {"head_dim": 32, "query_pre_attn_scalar": 32, "final_logit_softcapping": 30.0,
                   "attn_logit_softcapping": 50.0}),
    ("gemma2", 46, {"head_dim": 32, "query_pre_attn_scalar": 8, "final_logit_softcapping": 30.0,
                    "attn_logit_softcapping": 50.0}),    # the 27B rule: hidden / heads
    ("gemma3", 3, {"head_dim": 32, "query_pre_attn_scalar": 32, "final_logit_softcapping": None}),
])
def test_config_fixes_follow_llama_cpp(tmp_path: Path, arch: str, layers: int, expected: dict) -> None:
    from arte.backends.hf import gguf_config_fixes

    kv: dict[str, object] = {"key_length": 32}
    if arch == "gemma2":
        kv.update(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    assert gguf_config_fixes(_write_base(tmp_path / "c.gguf", arch, layers, **kv)) == expected


def test_adapters_record_a_resolvable_base(tmp_path: Path) -> None:
    """A hub id (and commit) where the model comes from the hub, else the model's name; never a local path,
    in the adapter config and in PEFT's model card alike."""
    import json

    from arte.adapters import stamp_adapter_base
    from arte.models import DEFAULT_MODEL, ModelRef, adapter_base

    default = ModelRef("gguf", tmp_path / DEFAULT_MODEL.filename, DEFAULT_MODEL.name, DEFAULT_MODEL.sha256)
    assert adapter_base(default) == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)
    commit = "7ae557604adf67be50417f59c2c2f167def9a775"
    snap = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / commit
    assert adapter_base(ModelRef("hf", snap, "x")) == ("Qwen/Qwen2.5-0.5B-Instruct", commit)
    assert adapter_base(ModelRef("hf", tmp_path / "my-student", "my-student")) == ("my-student", None)
    sourced = _write_base(tmp_path / "q.gguf", "qwen2",
                          source_repo_url="https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct")
    assert adapter_base(ModelRef("gguf", sourced, "q")) == ("Qwen/Qwen2.5-0.5B-Instruct", None)
    by_url = _write_base(tmp_path / "u.gguf", "qwen2", source_url="https://huggingface.co/google/gemma-3-1b-it")
    assert adapter_base(ModelRef("gguf", by_url, "u")) == ("google/gemma-3-1b-it", None)
    local = _write_base(tmp_path / "l.gguf", "qwen2", source_url="/home/me/models/qwen")
    assert adapter_base(ModelRef("gguf", local, "l")) == ("l", None)

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/root/.cache/x/hf/m",
                                                             "r": 8}))
    (adapter / "README.md").write_text("---\nbase_model: /root/.cache/x/hf/m\nlibrary_name: peft\ntags:\n"
                                       "- 'base_model:adapter:/root/.cache/x/hf/m'\n- lora\n---\n# card\n")
    stamp_adapter_base(adapter, "Qwen/Qwen2.5-0.5B-Instruct", "7ae5576")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg == {"base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "7ae5576", "r": 8}
    card = (adapter / "README.md").read_text()
    assert "/root" not in card and "base_model: Qwen/Qwen2.5-0.5B-Instruct\n" in card
    assert "- base_model:adapter:Qwen/Qwen2.5-0.5B-Instruct\n" in card
