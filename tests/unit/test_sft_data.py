"""The SFT format, tokenization split, packing and batch order (no torch)."""

from __future__ import annotations

import pytest

from arte.drafts import Draft
from arte.errors import ConfigError
from arte.sft_data import IGNORE, OPENER, ChatFormat, Example, batch_order, encode_records, pack, user_message
from tests.support.sft_fakes import CharTokenizer

TOK = CharTokenizer()


def rec(i: int, rationale: str = "It fits. <ans>yes</ans>", question: str = "Is it?") -> Draft:
    return Draft(id=f"r{i}", question=question, rationale=rationale, answer="yes")


def test_user_message_has_instruction_tag_request_and_question() -> None:
    m = user_message("Judge plausibility.", "  Is it?  ")
    assert m == "Judge plausibility. Include your final answer with the tag <ans> and </ans>.\n\nQuestion: Is it?"
    assert user_message("", "Q").startswith("Include your final answer")


def test_train_example_splits_prompt_and_completion_at_the_assistant_turn() -> None:
    fmt = ChatFormat(TOK, "Judge.")
    p, c = fmt.train_example(rec(0))
    assert TOK.decode(p).endswith("<|im_start|>assistant\n")
    assert "Question: Is it?" in TOK.decode(p)
    assert TOK.decode(c) == f"{OPENER} It fits. <ans>yes</ans><|im_end|>\n"


def test_rationale_without_tag_gets_the_answer_tag() -> None:
    _, c = ChatFormat(TOK, "Judge.").train_example(rec(0, rationale="It fits."))
    assert TOK.decode(c) == f"{OPENER} It fits. <ans>yes</ans><|im_end|>\n"


def test_eval_prompt_is_the_training_prompt_plus_the_opener() -> None:
    fmt = ChatFormat(TOK, "Judge.")
    p, c = fmt.train_example(rec(0))
    ev = fmt.eval_prompt("Is it?")
    assert ev == p + TOK(OPENER)["input_ids"]
    assert (p + c)[:len(ev)] == ev   # the trained sequence continues the eval prompt
    assert fmt.answer_prompt("Is it?") == p + TOK("<ans>")["input_ids"]


def test_k_shot_prompt_holds_the_demonstrations_as_earlier_turns() -> None:
    fmt = ChatFormat(TOK, "Judge.")
    demos = [rec(1, question="First?"), rec(2, question="Second?")]
    text = TOK.decode(fmt.eval_prompt("Third?", demos))
    assert text.index("First?") < text.index("Second?") < text.index("Third?")
    assert text.count("<|im_start|>assistant\n") == 3
    assert text.endswith(f"<|im_start|>assistant\n{OPENER}")


def test_encode_records_drops_examples_longer_than_max_length() -> None:
    fmt = ChatFormat(TOK, "J.")
    short, long_ = rec(0), rec(1, rationale="x" * 500 + " <ans>yes</ans>")
    examples, dropped = encode_records(fmt, [short, long_], max_length=300)
    assert [e.id for e in examples] == ["r0"] and dropped == ["r1"]
    p, c = fmt.train_example(short)
    assert examples[0].ids == tuple(p + c) and examples[0].n_prompt == len(p)


def test_pack_masks_prompts_and_never_predicts_across_examples() -> None:
    exs = [Example("a", (10, 11, 12, 13), 2), Example("b", (20, 21, 22), 1), Example("c", (30, 31, 32, 33, 34), 3)]
    rows = pack(exs, max_length=8, pad_id=0)
    assert all(len(r.input_ids) == len(r.labels) == len(r.position_ids) == 8 for r in rows)
    by_id = {r.example_ids: r for r in rows}
    # first-fit decreasing: c (5) then a (4) opens a new row, b (3) fits after c
    assert set(by_id) == {("c", "b"), ("a",)}
    cb = by_id[("c", "b")]
    assert cb.input_ids == (30, 31, 32, 33, 34, 20, 21, 22)
    assert cb.position_ids == (0, 1, 2, 3, 4, 0, 1, 2)
    # c: prompt 3 -> positions 2,3 predict 33,34; its last token predicts nothing; b: prompt 1
    assert cb.labels == (IGNORE, IGNORE, 33, 34, IGNORE, 21, 22, IGNORE)
    a = by_id[("a",)]
    assert a.labels == (IGNORE, 12, 13, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE)
    assert a.position_ids == (0, 1, 2, 3, 0, 1, 2, 3)   # the padding run is its own segment
    assert a.input_ids[4:] == (0, 0, 0, 0) and a.n_tokens == 4 and cb.n_tokens == 8


def test_pack_is_deterministic_and_refuses_oversized_examples() -> None:
    exs = [Example(str(i), tuple(range(1, 2 + i % 5)), 1) for i in range(20)]
    assert pack(exs, 10, 0) == pack(exs, 10, 0)
    assert sorted(i for r in pack(exs, 10, 0) for i in r.example_ids) == sorted(e.id for e in exs)
    with pytest.raises(ConfigError, match="max_length"):
        pack([Example("big", tuple(range(12)), 1)], 10, 0)


def test_batch_order_depends_only_on_seed_and_epoch() -> None:
    a = batch_order(10, 4, seed=1, epoch=0)
    assert a == batch_order(10, 4, seed=1, epoch=0)
    assert [len(b) for b in a] == [4, 4, 2]
    assert sorted(i for b in a for i in b) == list(range(10))
    assert a != batch_order(10, 4, seed=1, epoch=1)
    with pytest.raises(ConfigError, match="batch_size"):
        batch_order(10, 0, seed=0, epoch=0)
