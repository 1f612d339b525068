"""Causal-LM cross-entropy without materializing the logits.

Contract: ``lm_loss_sum(model, input_ids, position_ids, labels)`` returns the *sum* over labelled positions
of ``-log p(label | prefix)`` for a transformers causal LM (plain or wrapped by PEFT), with gradients, and
the number of labelled positions. ``labels`` are already shifted (``labels[i]`` is the token position ``i``
predicts, ``-100`` to skip), as :func:`arte.sft_data.pack` builds them; ``position_ids`` restart at 0 for
each packed example (a row that holds a single sequence runs with plain causal attention). The caller divides by the token
count of the whole (accumulated) batch, so gradient accumulation gives the same update as one big batch.

Why: the LM head is ``vocab`` wide (49,152 for SmolLM2). A plain loop computes ``batch × length × vocab``
logits in fp32 (200 MB at 4 × 256), then log-softmax and its gradient of the same size; it does so for
prompt positions too, which carry no loss. Here the backbone runs to its hidden states, only the
labelled positions are projected, in chunks of ``chunk_tokens`` rows, and each chunk's gradient with
respect to the hidden states is computed in the same pass (softmax minus one-hot, times the head's
weight), while the chunk's logits are at hand:

    loss_i = logsumexp(h_i W^T) - (h_i W^T)[y_i]
    dloss_i/dh_i = (softmax(h_i W^T) - onehot(y_i)) W

So no logits outlive their chunk and nothing is recomputed in backward; what is stored for backward is
the gradient itself (labelled tokens × hidden), which backward only scales. The head's weight gets a
gradient too when it requires one (it does not under LoRA: the head is frozen, tied to the embeddings).
A model whose config has ``final_logit_softcapping`` (Gemma 2) gets its logits capped the same way here
(``cap · tanh(z / cap)``, the chain rule's ``1 - tanh²`` in the gradient), so the loss is the model's own.
"""

from __future__ import annotations

from typing import Any

__all__ = ["linear_cross_entropy", "lm_loss_sum", "backbone_and_head"]


def _function() -> Any:
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Sum over rows of cross-entropy(hidden @ weight.T, targets), chunked; see the module docstring."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, chunk: int, softcap: float | None) -> Any:
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
            total = torch.zeros((), dtype=acc, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight) if need_w else None
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s:s + chunk]
                y = targets[s:s + chunk, None]
                z = (h @ weight.t()).to(acc)   # low-precision logits are summed in fp32
                if softcap:   # Gemma 2: z = cap·tanh(z/cap), dz/dz_raw = 1 - tanh²
                    t = torch.tanh(z / softcap)
                    z = t * softcap
                lse = torch.logsumexp(z, dim=-1, keepdim=True)
                total += (lse - z.gather(1, y)).sum()
                if need_h or need_w:
                    z.sub_(lse).exp_()                                   # softmax, in place
                    z.scatter_add_(1, y, torch.full_like(y, -1, dtype=z.dtype))   # minus one-hot
                    if softcap:
                        z.mul_(1 - t * t)
                    z = z.to(hidden.dtype)
                    if need_h:
                        torch.mm(z, weight, out=grad_h[s:s + chunk])
                    if need_w:
                        grad_w.addmm_(z.t(), h)
            ctx.save_for_backward(grad_h, grad_w)
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            grad_h, grad_w = ctx.saved_tensors
            return (None if grad_h is None else grad_h * grad_out,
                    None if grad_w is None else grad_w * grad_out, None, None, None)

    return LinearCrossEntropy


_FN: Any = None


def linear_cross_entropy(hidden: Any, weight: Any, targets: Any, chunk_tokens: int = 256,
                         softcap: float | None = None) -> Any:
    """``sum_i CE(hidden[i] @ weight.T, targets[i])`` for ``hidden`` (N, d), ``weight`` (V, d), ``targets`` (N,),
    never holding more than ``chunk_tokens × V`` logits. Differentiable in ``hidden`` and ``weight``.
    ``softcap``: the logits are ``softcap · tanh(logits / softcap)`` (Gemma 2's final logit soft-capping)."""
    global _FN
    if _FN is None:
        _FN = _function()
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    return _FN.apply(hidden, weight, targets, int(chunk_tokens), float(softcap) if softcap else None)


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """(backbone module returning ``last_hidden_state``, LM head weight) of a causal LM or a PEFT wrapper."""
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    # the decoder is `model` in every supported family (Gemma3ForCausalLM's base_model_prefix names another)
    backbone = base.model if hasattr(base, "model") else getattr(base, base.base_model_prefix)
    return backbone, base.get_output_embeddings().weight


def _softcap(model: Any) -> float | None:
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base.config, "final_logit_softcapping", None)


def lm_loss_sum(model: Any, input_ids: Any, position_ids: Any, labels: Any, *, chunk_tokens: int = 256
                ) -> tuple[Any, int]:
    """(summed next-token loss over positions with a label, number of such positions)."""
    import torch

    backbone, weight = backbone_and_head(model)
    width = input_ids.shape[1]
    if bool((position_ids == torch.arange(width, device=position_ids.device)).all()):
        # one sequence per row: plain causal attention (SDPA's is_causal path skips the masked half),
        # instead of the block-diagonal mask that packed position ids make transformers build
        position_ids = None
    hidden = backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    mask = labels != -100
    n = int(mask.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0   # keeps the graph connected: backward is a no-op
    # a bf16 head (arte.precision) takes bf16 rows; its logits are still summed in fp32
    return linear_cross_entropy(hidden[mask].to(weight.dtype), weight, labels[mask], chunk_tokens, _softcap(model)), n
