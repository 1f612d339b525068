"""The torch teacher's constrained decoding on a tiny random llama: random weights never write the draft
format by themselves, so every well-formed reply is the constraint's doing."""

from __future__ import annotations

import re

import pytest

from arte.formats import question_format, rationale_format
from arte.tasks import Example, Task
from tests.support.sft_fakes import tiny_llama

SPECIAL = {"<|im_start|>": 256, "<|im_end|>": 257}
OPTS = ("plausible", "implausible")
SPORTS = Task("sports", "Judge.", tuple(Example(f"s{i}", f"Player {i} scored a goal", (OPTS[i % 2],), OPTS)
                                        for i in range(3)), input_prefix="Statement:")
USER = [{"role": "user", "content": "Is it plausible?"}]


class ByteTokenizer:
    """Bytes are ids 0-255, then the two ChatML control tokens; GPT-2 byte-level token names."""

    eos_token_id = pad_token_id = 257
    all_special_ids = [256, 257]

    def __len__(self) -> int:
        return 258

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

        names = bytes_to_unicode()
        inv = {v: k for k, v in SPECIAL.items()}
        return [inv[i] if i in inv else names[i] for i in ids]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kw) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids: list[int] = []
        for part in re.split(r"(<\|im_start\|>|<\|im_end\|>)", text):
            ids += [SPECIAL[part]] if part in SPECIAL else list(part.encode())
        return {"input_ids": ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def teacher():
    torch = pytest.importorskip("torch")
    from arte.backends.hf_teacher import TorchTeacher

    torch.set_num_threads(1)
    model = tiny_llama(seed=1, vocab=258)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = 257
    return TorchTeacher(model, ByteTokenizer(), name="tiny", batch_size=2)


def test_constrained_replies_match_their_formats(teacher) -> None:
    rat = rationale_format(OPTS)
    ques = question_format(SPORTS, SPORTS.examples, 2, min_chars=10)
    counts: dict[str, int] = {}
    convs = [USER, USER, USER]
    out = teacher.chat(convs, temperature=1.0, max_new_tokens=90, seed=5, formats=[rat, ques, None], counts=counts)
    assert rat.matcher().matches(out[0]), out[0]
    assert ques.matcher().matches(out[1]), out[1]
    assert not rat.matcher().matches(out[2]) and not ques.matcher().matches(out[2])   # the free one is noise
    assert counts["generations"] == 2 and counts["replaced"] > 0 and counts.get("incomplete", 0) == 0
    again = teacher.chat(convs, temperature=1.0, max_new_tokens=90, seed=5, formats=[rat, ques, None])
    assert again[:2] == out[:2]                                     # reproducible for a seed
    greedy = teacher.chat([USER], temperature=0.0, max_new_tokens=40, formats=[rat])[0]
    assert re.fullmatch(r"[^<]*<ans>(plausible|implausible)</ans>", greedy)


def test_vocabulary_reads_byte_level_names(teacher) -> None:
    v = teacher.vocabulary()
    assert v.pieces[ord("a")] == b"a" and v.pieces[10] == b"\n" and v.pieces[0xC3] == b"\xc3"
    assert v.pieces[256] == b"" and v.eog == {257} and v.eos == 257
    assert len(v.pieces) >= 258
