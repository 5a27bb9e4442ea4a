"""The contract every replacement attention kernel implements: adapters route an attention module through it,
passes install it, the kernels in this package implement it."""

from __future__ import annotations

from torch import nn


class AttentionKernel(nn.Module):
    """The contract for a replacement of softmax(q kᵀ · scale + mask) v.

    `forward(query, key, value, attention_mask, scale)` takes (batch, heads, tokens, head_dim) tensors and returns
    (batch, heads, query_tokens, head_dim). `attention_mask` is None, a bool tensor broadcastable to
    (batch, heads, query_tokens, key_tokens) with True where attention is allowed, or an additive float tensor of
    that shape. After each forward, `uncounted_flops` holds the floating-point work the kernel did that torch's
    FLOP counter cannot see (sorting, scatter and gather), so cost reports stay honest.
    """

    uncounted_flops: int = 0

    def forward(self, query, key, value, attention_mask, scale):  # pragma: no cover - interface
        raise NotImplementedError
