"""The chunked linear cross-entropy equals the plain one, in value and gradients; packed rows give the
same loss as their examples run one by one."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from arte.chunked_loss import linear_cross_entropy, lm_loss_sum  # noqa: E402
from arte.sft_data import Example, pack  # noqa: E402
from tests.support.sft_fakes import tiny_llama  # noqa: E402


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_linear_cross_entropy_matches_full_logits(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (11,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), y, reduction="sum")
    gh_ref, gw_ref = torch.autograd.grad(ref * 0.5, (h, w))
    got = linear_cross_entropy(h, w, y, chunk_tokens=chunk)
    gh, gw = torch.autograd.grad(got * 0.5, (h, w))
    assert torch.allclose(got, ref, atol=1e-10)
    assert torch.allclose(gh, gh_ref, atol=1e-10) and torch.allclose(gw, gw_ref, atol=1e-10)


def test_frozen_weight_gets_no_gradient() -> None:
    h = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(9, 4)
    loss = linear_cross_entropy(h, w, torch.tensor([1, 2, 3, 4, 5]), chunk_tokens=2)
    loss.backward()
    assert h.grad is not None and w.grad is None


def test_packed_loss_equals_the_sum_of_per_example_losses() -> None:
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    exs = [Example(str(i), tuple(torch.randint(3, 250, (n,), generator=g).tolist()), p)
           for i, (n, p) in enumerate([(9, 3), (6, 2), (12, 5)])]
    rows = pack(exs, max_length=16, pad_id=0)
    assert any(len(r.example_ids) > 1 for r in rows)   # the check is about packing
    packed = 0.0
    for r in rows:
        loss, _ = lm_loss_sum(model, torch.tensor([r.input_ids]), torch.tensor([r.position_ids]),
                              torch.tensor([r.labels]))
        packed += loss.item()
    alone = 0.0
    with torch.no_grad():
        for e in exs:
            logits = model(input_ids=torch.tensor([e.ids])).logits[0]
            target = torch.tensor(e.ids[e.n_prompt:])
            alone += float(torch.nn.functional.cross_entropy(logits[e.n_prompt - 1:-1], target, reduction="sum"))
    assert packed == pytest.approx(alone, rel=1e-5)


def test_no_labelled_position_gives_a_zero_loss_that_backpropagates() -> None:
    model = tiny_llama()
    ids = torch.tensor([[5, 6, 7]])
    loss, n = lm_loss_sum(model, ids, torch.tensor([[0, 1, 2]]), torch.full((1, 3), -100))
    loss.backward()
    assert n == 0 and loss.item() == 0.0


def test_a_single_sequence_row_gives_the_same_loss_trimmed_or_padded() -> None:
    """Trimmed, the row takes the plain causal path; padded, the block-diagonal mask path."""
    model = tiny_llama()
    (row,) = pack([Example("a", tuple(range(10, 22)), 4)], max_length=20, pad_id=0)
    full = [torch.tensor([x]) for x in (row.input_ids, row.position_ids, row.labels)]
    trimmed = [t[:, :row.n_tokens] for t in full]
    a, n_a = lm_loss_sum(model, *full)
    b, n_b = lm_loss_sum(model, *trimmed)
    assert n_a == n_b == 8 and a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("chunk", [2, 64])
def test_soft_capped_logits_match_the_capped_full_logits(chunk: int) -> None:
    """Gemma 2 caps its logits (cap · tanh(z / cap)); the chunked loss and its gradients follow."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = (4 * torch.randn(30, 8, generator=g, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 30, (7,), generator=g)
    ref = torch.nn.functional.cross_entropy(5.0 * torch.tanh((h @ w.t()) / 5.0), y, reduction="sum")
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    got = linear_cross_entropy(h, w, y, chunk_tokens=chunk, softcap=5.0)
    gh, gw = torch.autograd.grad(got, (h, w))
    assert torch.allclose(got, ref, atol=1e-10)
    assert torch.allclose(gh, gh_ref, atol=1e-10) and torch.allclose(gw, gw_ref, atol=1e-10)
    assert not torch.allclose(got, linear_cross_entropy(h, w, y, chunk_tokens=chunk))   # the cap bites


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "qwen3", "phi3"])
def test_the_chunked_loss_is_the_models_own_loss_in_every_family(model_type: str) -> None:
    """Gemma 3's decoder is not its ``base_model_prefix``; Gemma 2 soft-caps its logits: both reach the loss."""
    import transformers as tf

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.5)
    cfg = {"gemma2": lambda: tf.Gemma2Config(**common, head_dim=16, final_logit_softcapping=2.0,
                                             attn_implementation="eager"),
           "gemma3_text": lambda: tf.Gemma3TextConfig(**common, head_dim=16),
           "qwen3": lambda: tf.Qwen3Config(**common, head_dim=16),
           "phi3": lambda: tf.Phi3Config(**common, pad_token_id=0, bos_token_id=1, eos_token_id=2)}[model_type]()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(3, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    labels = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)
    labels[0, :4] = -100
    loss, n = lm_loss_sum(model, ids, torch.arange(12)[None], labels)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    ref = torch.nn.functional.cross_entropy(logits[4:-1], ids[0, 5:], reduction="sum")
    assert n == 7 and loss.item() == pytest.approx(ref.item(), rel=1e-5)
