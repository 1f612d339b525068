"""The real embedded model: cache reuse gives exactly what naive per-prompt evaluation gives."""

from pathlib import Path

import numpy as np
import pytest

from arte.backends.llama import LlamaCppStudent
from arte.drafts import read_drafts
from arte.prompts import option_continuation, scoring_item, scoring_prefix
from arte.scoring import ScoringConfig, score_drafts
from arte.tasks import load_task, split_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sports(bigbench_dir: Path):
    task = load_task(bigbench_dir / "sports_understanding.json")
    return task, list(split_task(task, seed=0, n_seeds=0).validation[:8])


@pytest.fixture(scope="module")
def students(default_model, n_threads):
    """(fast: trie batches + parallel decoding, exact: prefix reuse one sequence at a time, naive)."""
    fast = LlamaCppStudent(default_model.path, n_threads=n_threads)
    exact = LlamaCppStudent(default_model.path, n_threads=n_threads, parallel=False)
    naive = LlamaCppStudent(default_model.path, n_threads=n_threads, reuse=False)
    yield fast, exact, naive
    for s in (fast, exact, naive):
        s.close()


def _requests(student, task, draft, items):
    prefix = student.tokenize(scoring_prefix(task, draft), bos=True)
    return [(prefix + student.tokenize(scoring_item(task, e, "loglik")),
             [student.tokenize(option_continuation(c)) for c in e.choices]) for e in items]


def test_prefix_reuse_is_bit_identical_to_naive(students, sports, data_dir: Path) -> None:
    _, exact, naive = students
    task, items = sports
    drafts = read_drafts(data_dir / "drafts_sports_understanding.jsonl")[:2]
    before = (exact.tokens_evaluated, naive.tokens_evaluated)
    for d in drafts:
        reqs = _requests(exact, task, d, items[:5])
        assert exact.loglik_batch(reqs) == [naive.loglik(p, c) for p, c in reqs]
    work = exact.tokens_evaluated - before[0], naive.tokens_evaluated - before[1]
    assert work[0] * 3 < work[1]          # the same numbers for a third of the work or less
    prompts = [p for p, _ in _requests(exact, task, drafts[0], items[:2])]
    assert exact.generate(prompts, max_new_tokens=16) == naive.generate(prompts, max_new_tokens=16)


# Largest |trie - naive| log-probability allowed per continuation token (see the test below).
TRIE_NOISE_PER_TOKEN = 0.1


def test_trie_batches_agree_with_naive_within_the_quantization_noise(students, sports, data_dir: Path) -> None:
    """Trie batches interleave other sequences' KV cells with a sequence's own, so attention sums round
    differently, and Q4_1's 8-bit activation quantization amplifies that; near ties between two options can
    flip. The tolerance is measured across builds (sports_understanding, drafts [::5] x 16 validation items,
    6-token options; AMD EPYC, 1 and 2 threads give identical numbers):

    ============================  ==========================  ===============  ========================
    llama.cpp build               max |trie - naive| (nats)   decisions that   this test's 2 x 8 items
                                  per option / per token      flip, of 64      agreeing
    ============================  ==========================  ===============  ========================
    portable (AVX2, the default)  0.310 / 0.052               4 (margin<=0.12) 13 of 16
    native (AVX-512)              0.327 / 0.055               1 (margin 0.064) 16 of 16
    ============================  ==========================  ===============  ========================

    The two builds' naive log-probs differ from each other by up to 0.39 nats (6 of 64 naive decisions
    differ), and an Intel Xeon with the portable build also agreed on 13 of 16: a fixed share of agreeing
    decisions cannot hold on every CPU. What the code guarantees is the bound: every log-prob within
    ``TRIE_NOISE_PER_TOKEN`` (0.1, about twice the largest measured) per token of naive, so a decision flips
    only where naive's margin between the two options is within that noise. A wrong position or a token
    attending to another item's cells costs whole nats per token.
    """
    fast, _, naive = students
    task, items = sports
    drafts = read_drafts(data_dir / "drafts_sports_understanding.jsonl")[::5][:2]
    flips = total = 0
    for d in drafts:
        reqs = _requests(fast, task, d, items)
        got, want = fast.loglik_batch(reqs), [naive.loglik(p, c) for p, c in reqs]
        for g, w in zip(got, want):
            assert [x.n_tokens for x in g] == [x.n_tokens for x in w]
            for x, y in zip(g, w):
                assert abs(x.logprob - y.logprob) <= TRIE_NOISE_PER_TOKEN * x.n_tokens, (x, y)
            pick, want_pick = int(np.argmax([x.logprob for x in g])), int(np.argmax([x.logprob for x in w]))
            if pick != want_pick:   # only a near tie may flip
                margin = w[want_pick].logprob - w[pick].logprob
                assert margin <= TRIE_NOISE_PER_TOKEN * (w[want_pick].n_tokens + w[pick].n_tokens), margin
                flips += 1
            total += 1
    assert total == 16 and flips < total


def test_scores_equal_naive_in_every_mode(students, sports, data_dir: Path) -> None:
    _, exact, naive = students
    task, items = sports
    drafts = read_drafts(data_dir / "drafts_sports_understanding.jsonl")[::5][:2]
    for cfg, n in ((ScoringConfig(mode="loglik"), 4), (ScoringConfig(mode="generate", max_new_tokens=32), 3),
                   (ScoringConfig(mode="cot-choice", max_new_tokens=32), 3)):
        a = score_drafts(exact, task, drafts, items[:n], cfg)
        b = score_drafts(naive, task, drafts, items[:n], cfg)
        assert a.scores == b.scores and np.array_equal(a.outcomes, b.outcomes)


def test_parallel_generation_agrees_with_one_at_a_time(students) -> None:
    fast, _, naive = students
    prompts = [fast.tokenize(f"Question: What is {k} plus {k}?\nAnswer:") for k in range(5)]  # short prompts
    got = fast.generate(prompts, max_new_tokens=24, stop=["\n"])
    want = naive.generate(prompts, max_new_tokens=24, stop=["\n"])
    assert sum(g == w for g, w in zip(got, want)) >= 4 and all(g.n_tokens > 0 for g in got)
    assert {g.stop for g in got} <= {"\n", "eos", "length"}


def test_parallel_reasoning_agrees_with_one_at_a_time(students, sports, data_dir: Path) -> None:
    """cot-choice on the real model: continuous batching and option tries in the generated cells give what
    parallel=False gives (reasoning, then the options re-evaluated one sequence at a time), within the
    Q4_1 noise. Measured here (these 2 drafts x 8 items, n_parallel 3, 5, 8 and 16): 13-14 of 16 reasonings
    identical (a near-tie between two tokens flips the rest), option log-probs after an identical reasoning
    within 0.32 nats (mean 0.05-0.07; a continuation has about 5 tokens), 15-16 of 16 choices the same. On
    another machine of this kind (CI, same portable wheel) only 9 of 16 reasonings were identical: batch
    shapes change the float sums, and greedy decoding amplifies a flipped near-tie. The bounds below keep
    enough identical reasonings for the log-prob check to bite, and a choice agreement far above chance."""
    from arte.answers import ANS_OPEN

    fast, exact, _ = students
    task, items = sports
    drafts = read_drafts(data_dir / "drafts_sports_understanding.jsonl")[::7][:2]
    same_text = same_choice = total = 0
    for d in drafts:
        prefix = fast.tokenize(scoring_prefix(task, d), bos=True)
        prompts = [prefix + fast.tokenize(scoring_item(task, e, "cot-choice")) for e in items]
        options = [[fast.tokenize(option_continuation(c)) for c in e.choices] for e in items]
        got = fast.reason_loglik(prompts, options, cue=ANS_OPEN, max_new_tokens=48, stop=("\nQuestion:",))
        want = exact.reason_loglik(prompts, options, cue=ANS_OPEN, max_new_tokens=48, stop=("\nQuestion:",))
        for g, w in zip(got, want):
            total += 1
            assert g.generation.stop in (ANS_OPEN, "\nQuestion:", "eos", "length")
            assert len(g.continuations) == len(w.continuations) == 2
            if g.generation == w.generation:   # the same reasoning: the same context for the options
                same_text += 1
                # A wrong position or a token attending to another item's cells would cost whole nats.
                assert [c.logprob for c in g.continuations] == pytest.approx([c.logprob for c in w.continuations],
                                                                             abs=0.6)
            same_choice += int(np.argmax([c.logprob for c in g.continuations]) ==
                               np.argmax([c.logprob for c in w.continuations]))
    assert same_text >= 0.25 * total and same_choice >= 0.6 * total, (same_text, same_choice, total)


def test_sampling_is_seeded(students) -> None:
    fast, _, _ = students
    p = [fast.tokenize("Write a word:")]
    a = fast.generate(p * 3, max_new_tokens=8, temperature=1.0, seed=1)
    b = fast.generate(p * 3, max_new_tokens=8, temperature=1.0, seed=1)
    assert a == b and len({g.text for g in a}) > 1


def test_context_overflow_is_a_clear_error(default_model) -> None:
    from arte.errors import BackendError

    with LlamaCppStudent(default_model.path, n_ctx=128, n_batch=128, n_threads=2) as small:
        too_long = list(range(100, 100 + small.n_ctx + 10))
        with pytest.raises(BackendError, match="context"):
            small.loglik(too_long, [[5]])
        with pytest.raises(BackendError, match="context"):
            small.generate([too_long], max_new_tokens=4)
        assert small.loglik(too_long[:50], [[5]])[0].n_tokens == 1   # still usable afterwards


def test_torch_student_matches_llama_and_its_own_naive_path(default_model, students, sports) -> None:
    from arte.backends.hf import TorchStudent
    from arte.home import convert_dir

    fast, _, _ = students
    task, items = sports
    ts = TorchStudent.from_ref(default_model, convert_dir=convert_dir())   # converted once, then cached
    ts_naive = TorchStudent(ts.model, ts.tok, reuse=False)
    e = items[0]
    from arte.drafts import Draft
    d = Draft("d", "Statement: Messi scored a goal\nOptions: plausible, implausible", "Messi plays football. <ans>plausible</ans>", "plausible")
    p_text = scoring_prefix(task, d) + scoring_item(task, e, "loglik")
    conts = [option_continuation(c) for c in e.choices]
    pt = ts.tokenize(p_text)
    assert pt == fast.tokenize(p_text)        # same tokenizer ids as llama.cpp
    a = ts.loglik(pt, [ts.tokenize(c) for c in conts])
    b = ts_naive.loglik(pt, [ts.tokenize(c) for c in conts])
    c = fast.loglik(pt, [fast.tokenize(x) for x in conts])
    for x, y, z in zip(a, b, c):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-3)
        assert x.logprob == pytest.approx(z.logprob, abs=0.5)   # Q4_1 activation noise, not a different model
    prompts = [ts.tokenize(f"Question: What is {k} plus {k}?\nAnswer:") for k in (2, 3)]
    gens = ts.generate(prompts, max_new_tokens=8, stop=["\n"])
    assert gens == ts_naive.generate(prompts, max_new_tokens=8, stop=["\n"])
    assert all(g.n_tokens >= 1 for g in gens)
