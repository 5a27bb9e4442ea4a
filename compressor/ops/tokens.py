"""Token tensors with sizes: gather and scatter by index, the size-weighted attention bias, attention that also
reports how much attention each token received.

A token that stands for `s` original tokens (after merging) has size `s`; proportional attention adds log(s) to
every attention logit pointing at it, so softmax weighs it as if its `s` originals were all still there (ToMe,
Bolya et al. 2023). A padding token has size 0: log(0) = -inf masks it as an attention mask would, and a
size-weighted average gives it no weight, so padding needs no separate mask once sizes exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressor.errors import CompressorError


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x[b, index[b, k]] for (batch, tokens, ...) `x` and (batch, k) `index`."""
    expanded = index.reshape(*index.shape, *(1,) * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])
    return x.gather(1, expanded)


def scatter_tokens(base: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """A copy of `base` with base[b, index[b, k]] = values[b, k]."""
    expanded = index.reshape(*index.shape, *(1,) * (base.dim() - 2)).expand(-1, -1, *base.shape[2:])
    return base.scatter(1, expanded, values)


def size_bias(size: Tensor, proportional: bool = True) -> Tensor:
    """The additive attention bias (batch, 1, 1, tokens) for token sizes: log(size), or only the padding mask
    (0 where size > 0, -inf where 0) when attention is not proportional."""
    bias = size.log() if proportional else torch.zeros_like(size).masked_fill(size <= 0, float("-inf"))
    return bias[:, None, None, :]


def split_heads(x: Tensor, head_dim: int) -> Tensor:
    """(batch, tokens, heads·head_dim) -> (batch, heads, tokens, head_dim)."""
    batch, tokens, _ = x.shape
    return x.view(batch, tokens, -1, head_dim).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, tokens, head_dim) -> (batch, tokens, heads·head_dim)."""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def attend(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, scale: float, bias: Tensor | None,
           importance: str | None = None, query_size: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """softmax(q kᵀ · scale + bias) v for (batch, heads, tokens, head_dim) tensors, and optionally each token's
    importance (batch, tokens), averaged over heads:

    - "cls": the attention the first token (the class token) pays to each token; one extra query row;
    - "mean": the attention each token receives, averaged over the (size-weighted) queries; this needs the whole
      attention matrix, so attention runs eagerly (the same FLOPs as SDPA);
    - "value_norm": the norm of each token's value vector, what it can add to the others' outputs (Kobayashi et
      al. 2020: attention weights alone overlook it); nothing but the values, so any kernel (SDPA, act) attends.
      Zero-size tokens (padding) rank last.

    A replacement kernel installed on `module` (the `act` pass) computes the attention; it receives `bias` as an
    additive key mask. Mean importance needs the full attention matrix a kernel never forms, so that combination
    is refused.
    """
    kernel = module._modules.get("attention_kernel")
    if importance == "mean":
        if kernel is not None:
            raise CompressorError(
                "token reduction ranks tokens here by the mean attention they receive, which needs the full "
                "attention matrix, but an attention kernel (act) replaces this layer's attention; leave these "
                "layers out of one of the two passes (targets/ignore)")
        logits = torch.matmul(query, key.transpose(-1, -2)) * scale
        if bias is not None:
            logits = logits + bias
        probabilities = logits.softmax(dim=-1)
        output = torch.matmul(probabilities, value)
        weights = query_size if query_size is not None else query.new_ones(query.shape[0], query.shape[2])
        weights = (weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-6))[:, None, :, None]
        return output, (probabilities * weights).sum(dim=2).mean(dim=1)
    if kernel is not None:
        try:
            output = kernel(query, key, value, bias, scale)
        except ValueError as error:  # e.g. ACT clustering keys cannot weigh them by token size
            raise CompressorError(f"the attention kernel (act) on this layer cannot take the token sizes of "
                                  f"merged tokens ({error}); use act.cluster=queries, or "
                                  "token_merge.proportional_attention=false") from None
    else:
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)
    if importance is None:
        return output, None
    if importance == "value_norm":
        norms = value.norm(dim=-1).mean(dim=1)
        return output, norms if query_size is None else norms * (query_size > 0)
    logits = torch.matmul(query[:, :, :1], key.transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias
    return output, logits.softmax(dim=-1)[:, :, 0].mean(dim=1)
