"""Scaled dot-product attention that keeps less for backward when training on CPU with dropout.

With attention dropout, PyTorch's CPU attention is the "math" path: it keeps three
(rows, heads, length, length) float tensors per layer for backward (the softmax output, the
dropout noise and the dropped probabilities), the largest part of a training step's activations
(0.91 of the 2.29 GB a MiniLM step of 64 rows x 128 tokens keeps). ``LeanAttention`` runs the
same operations in the same order, on the same random draws, and keeps the softmax output and a
boolean dropout mask instead; backward rebuilds the noise and the dropped probabilities from them
(two element-wise products). Outputs and gradients are bitwise those of
``torch.nn.functional.scaled_dot_product_attention``.

Everywhere else (no gradient, evaluation, no dropout, other devices, autocast, position biases,
grouped heads, causal masks) the library's ``sdpa`` runs unchanged. Registered with transformers as
``sdpa_lean``; models whose attention goes through transformers' attention interface (BERT,
RoBERTa and their kin) use it by default in training, others keep their own.
"""

from __future__ import annotations

import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

NAME = "sdpa_lean"


class LeanAttention(torch.autograd.Function):
    """softmax(q k^T * scale + mask) with dropout p, times v; q, k, v: (B, heads, T, head_dim)."""

    @staticmethod
    def forward(ctx, query, key, value, mask, scale: float, p: float):
        root = math.sqrt(scale)  # the math path scales q and k by sqrt(scale) each
        query, key = query * root, key * root
        scores = torch.matmul(query, key.transpose(-2, -1))
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        del scores
        keep = torch.empty_like(probs, dtype=torch.bool).bernoulli_(1 - p)  # the draws dropout makes
        out = torch.matmul(probs * _noise(keep, probs.dtype, p), value)
        ctx.save_for_backward(query, key, value, probs, keep)
        ctx.root, ctx.p = root, p
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, probs, keep = ctx.saved_tensors
        noise = _noise(keep, probs.dtype, ctx.p)
        grad_value = torch.matmul((probs * noise).transpose(-2, -1), grad)
        grad_probs = torch.matmul(grad, value.transpose(-2, -1)) * noise
        del noise
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs
        grad_query = torch.matmul(grad_scores, key) * ctx.root
        grad_key = torch.matmul(grad_scores.transpose(-2, -1), query) * ctx.root
        return grad_query, grad_key, grad_value, None, None, None


def _noise(keep: torch.Tensor, dtype: torch.dtype, p: float) -> torch.Tensor:
    """Dropout's multiplier, as ``torch.nn.functional.dropout`` builds it: 0 or 1 / (1 - p)."""
    return keep.to(dtype).div_(1 - p)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True: attend) as the math path adds it: 0 or -inf."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask.logical_not(), -math.inf)


def sdpa_lean(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers' attention-interface signature; returns (output (B, T, heads, head_dim), None)."""
    lean = (dropout > 0 and torch.is_grad_enabled() and query.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu") and query.dtype == key.dtype == value.dtype
            and not getattr(module, "is_causal", False) and not is_causal
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and query.shape[1] == key.shape[1]  # as many key/value heads as query heads
            and (query.requires_grad or key.requires_grad or value.requires_grad))
    if not lean:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = LeanAttention.apply(query, key, value, _additive(attention_mask, query.dtype), scale, dropout)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_lean)
AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the masks sdpa is given
