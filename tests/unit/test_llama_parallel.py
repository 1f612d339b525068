"""The llama.cpp student's decoding strategies on a fake cache (tests/support/llama_fakes.py): continuous batching,
option tries after the reasoning and prefix reuse give exactly what one-at-a-time and naive decoding give."""

from __future__ import annotations

import pytest

from arte.errors import BackendError
from arte.student import reason_then_loglik
from tests.support.llama_fakes import EOS, FakeLlama, script

SHARED = "A shared demonstration prefix, long enough to matter. " * 4 + "Answer key: {key}\n\n"


def _prompts(st: FakeLlama, n: int, key: str = "no") -> list[list[int]]:
    # Different items after one prefix: the scripts (cue, EOS, "\nQuestion:", budget) differ per item.
    return [st.tokenize(SHARED.format(key=key) + f"Question: item {i}?\nAnswer: Let's think step by step.")
            for i in range(n)]


def _options(st: FakeLlama, n: int) -> list[list[list[int]]]:
    opts = [["yes", "no"], ["no", "maybe", "yes"], ["yes"]]
    return [[st.tokenize(f"{o}</ans>") for o in opts[i % 3]] for i in range(n)]


def test_the_fake_covers_every_way_a_reasoning_ends() -> None:
    st = FakeLlama()
    kinds = set()
    for p in _prompts(st, 14):
        plan = script(bytes(t for t in p if t < 256))
        kinds.add("cue" if b"<ans>" in plan else "question" if b"Question" in plan else
                  "budget" if len(plan) > 60 else "eos")
    assert kinds == {"cue", "question", "budget", "eos"}


@pytest.mark.parametrize("n_parallel, n_batch", [(3, 64), (8, 16), (1, 64)])
def test_parallel_generation_equals_one_at_a_time_and_naive(n_parallel: int, n_batch: int) -> None:
    fast = FakeLlama(n_parallel=n_parallel, n_batch=n_batch)
    one = FakeLlama(parallel=False)
    naive = FakeLlama(reuse=False)
    prompts = _prompts(fast, 11)
    stop = ["</ans>", "\nQuestion:"]
    got = fast.generate(prompts, max_new_tokens=40, stop=stop)
    assert got == one.generate(prompts, max_new_tokens=40, stop=stop) == naive.generate(prompts, max_new_tokens=40,
                                                                                         stop=stop)
    assert {g.stop for g in got} == {"</ans>", "\nQuestion:", "eos", "length"}
    assert fast.held_sequences() <= {0} and fast.max_seq <= fast._slots
    assert fast.tokens_evaluated < naive.tokens_evaluated / 3   # the prefix once, not once per item


def test_continuous_batching_keeps_the_batch_full() -> None:
    fast = FakeLlama(n_parallel=4)
    prompts = _prompts(fast, 12)
    fast.generate(prompts, max_new_tokens=60, stop=["</ans>"])
    waves = FakeLlama(n_parallel=4)
    for k in range(0, 12, 4):     # what waves of 4 (each as long as its longest sequence) would cost
        waves.generate(prompts[k:k + 4], max_new_tokens=60, stop=["</ans>"])
    assert fast.decode_calls < waves.decode_calls


def test_reason_loglik_parallel_equals_one_at_a_time_and_naive() -> None:
    fast = FakeLlama(n_parallel=3, n_batch=32)
    one = FakeLlama(parallel=False)
    naive = FakeLlama(reuse=False)
    prompts, opts = _prompts(fast, 10), _options(fast, 10)
    kw = dict(cue="<ans>", max_new_tokens=24, stop=("\nQuestion:",))
    got = fast.reason_loglik(prompts, opts, **kw)
    assert got == one.reason_loglik(prompts, opts, **kw) == naive.reason_loglik(prompts, opts, **kw)
    assert [len(r.continuations) for r in got] == [len(o) for o in opts]
    assert {r.generation.stop for r in got} == {"<ans>", "\nQuestion:", "eos", "length"}
    # The fake answers "no" after a cue (the prompt's answer key): "no" is then the likeliest option.
    for r, o in zip(got, opts):
        if r.generation.stop == "<ans>" and len(o) > 1:
            best = max(range(len(o)), key=lambda k: r.continuations[k].logprob)
            assert fast.detokenize(o[best]) == "no</ans>" and r.continuations[best].is_greedy
    assert fast.held_sequences() <= {0}


def test_reason_loglik_scores_after_the_retokenized_reasoning_and_cue() -> None:
    """The fake's tokenizer writes <ans> as one token that the model never generates, so scoring in the
    generated cells, or without the cue, would see other tokens and give other numbers."""
    fast = FakeLlama()
    prompts, opts = _prompts(fast, 6), _options(fast, 6)
    got = fast.reason_loglik(prompts, opts, cue="<ans>", max_new_tokens=24)
    for p, o, r in zip(prompts, opts, got):
        ctx = list(p) + fast.tokenize(r.generation.text + "<ans>")
        assert list(r.continuations) == FakeLlama(reuse=False).loglik(ctx, o)


def test_reason_loglik_with_few_sequence_ids_and_a_small_cache() -> None:
    # 3 options need 2 extra ids per finished item; 4 slots leave room for 2 generating sequences.
    tight = FakeLlama(n_parallel=8, n_batch=5, n_ctx=600)
    prompts, opts = _prompts(tight, 7), _options(tight, 7)
    kw = dict(cue="<ans>", max_new_tokens=16)
    assert tight.reason_loglik(prompts, opts, **kw) == FakeLlama(parallel=False).reason_loglik(prompts, opts, **kw)
    assert tight.max_seq <= 4 and tight.max_cells <= 600 and tight.held_sequences() <= {0}


def test_generic_reason_then_loglik_agrees() -> None:
    fast = FakeLlama()
    prompts, opts = _prompts(fast, 5), _options(fast, 5)
    assert fast.reason_loglik(prompts, opts, cue="<ans>", max_new_tokens=24) == \
        reason_then_loglik(FakeLlama(), prompts, opts, cue="<ans>", max_new_tokens=24)


def test_loglik_trie_equals_naive() -> None:
    fast, naive = FakeLlama(n_batch=16), FakeLlama(reuse=False)
    reqs = [(p, o) for p, o in zip(_prompts(fast, 6), _options(fast, 6))]
    assert fast.loglik_batch(reqs) == naive.loglik_batch(reqs) == FakeLlama(parallel=False).loglik_batch(reqs)


def test_sampling_depends_on_the_prompt_index_not_on_the_batching() -> None:
    prompts = _prompts(FakeLlama(), 6)
    a = FakeLlama(n_parallel=6).generate(prompts, max_new_tokens=8, temperature=5.0, seed=3)
    b = FakeLlama(n_parallel=2).generate(prompts, max_new_tokens=8, temperature=5.0, seed=3)
    c = FakeLlama(n_parallel=2).generate(prompts, max_new_tokens=8, temperature=5.0, seed=4)
    assert a == b and a != c


def test_a_prompt_that_cannot_fit_is_a_clear_error_and_the_student_stays_usable() -> None:
    st = FakeLlama(n_ctx=80)
    prompts = _prompts(st, 2)
    with pytest.raises(BackendError, match="context"):
        st.generate(prompts, max_new_tokens=60)
    with pytest.raises(BackendError, match="context"):
        st.reason_loglik(prompts, _options(st, 2), cue="<ans>", max_new_tokens=30)
    assert st.held_sequences() <= {0}
    assert len(st.generate([prompts[0][-20:]], max_new_tokens=4)) == 1


def test_stop_strings_split_across_tokens_are_found_and_cut() -> None:
    st = FakeLlama()
    gens = st.generate(_prompts(st, 14), max_new_tokens=40, stop=["so <a"])
    cut = [g for g in gens if g.stop == "so <a"]
    assert cut and all(g.text.endswith(" ") and "so <a" not in g.text for g in cut)
    assert all(g.stop in ("so <a", "eos", "length") for g in gens)
    assert EOS not in st.tokenize("".join(g.text for g in gens))
