"""Fewer tokens from layer to layer: ToMe bipartite soft matching (merge, and unmerge to the full token map) and
EViT-style clipping by importance (drop, or fuse the dropped tokens into one), with no model knowledge.

Every reduction is a `mapping` (batch, tokens) from each current token to its new index, or -1 where the token
leaves the sequence. New tokens are weighted averages of the old tokens mapped to them (by size when merging, by
importance for the fused token), so one `combine` serves both methods. Composing the mappings gives, for every
original token, the token that now carries it: that is unmerge. A token that left without being fused keeps the
value it had then (a sparse update: it passed the remaining layers unchanged), which is what a dense output
(DETR's decoder, BERT's token states) gets back for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from compressor.ops.token_reducer import TokenReducer
from compressor.ops.tokens import attend, gather_tokens, merge_heads, size_bias

#: added to the best match of a padding token (size 0) so padding is merged away before any real token
PADDING_FIRST = 1e4


def bipartite_merge_mapping(metric: Tensor, r: int, prefix: int = 0, size: Tensor | None = None
                            ) -> tuple[Tensor, int] | None:
    """ToMe's bipartite soft matching: tokens alternate into sets A and B; each A token's most similar B token
    (cosine of `metric`) is its match; the `r` A tokens with the best matches merge into them.

    The first `prefix` tokens (class, distillation, registers) never merge. New order: prefix, unmerged A tokens in
    their original order, then B. Returns (mapping, new token count), or None when nothing merges.
    """
    batch, tokens, _ = metric.shape
    body = metric[:, prefix:]
    count = body.shape[1]
    r = min(int(r), count // 2)
    if r <= 0:
        return None
    body = body / body.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    a, b = body[:, ::2], body[:, 1::2]
    scores = torch.matmul(a, b.transpose(-1, -2))
    if size is not None:
        scores = scores + (size[:, prefix::2] <= 0).to(scores.dtype)[..., None] * PADDING_FIRST
    best, match = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values
    unmerged, in_b = kept.shape[1], b.shape[1]
    arange = torch.arange(max(unmerged, in_b), device=metric.device).expand(batch, -1)
    mapping_a = torch.empty_like(best, dtype=torch.long)
    mapping_a.scatter_(1, kept, prefix + arange[:, :unmerged])
    mapping_a.scatter_(1, merged, prefix + unmerged + match.gather(1, merged))
    mapping = torch.empty(batch, tokens, dtype=torch.long, device=metric.device)
    mapping[:, :prefix] = torch.arange(prefix, device=metric.device)
    mapping[:, prefix::2] = mapping_a
    mapping[:, prefix + 1::2] = prefix + unmerged + arange[:, :in_b]
    return mapping, prefix + unmerged + in_b


def clip_mapping(importance: Tensor, keep: int, prefix: int = 0, fuse: bool = False) -> tuple[Tensor, int] | None:
    """Keep the `keep` most important non-prefix tokens (in their original order); the rest leave, or with `fuse`
    all map to one extra last token. Returns (mapping, new token count), or None when every token stays."""
    batch, tokens = importance.shape
    count = tokens - prefix
    keep = max(1, min(int(keep), count))
    if keep >= count:
        return None
    top = importance[:, prefix:].topk(keep, dim=-1).indices.sort(dim=-1).values
    body = torch.full((batch, count), prefix + keep if fuse else -1, dtype=torch.long, device=importance.device)
    body.scatter_(1, top, prefix + torch.arange(keep, device=importance.device).expand(batch, -1))
    prefix_map = torch.arange(prefix, device=importance.device).expand(batch, -1)
    return torch.cat([prefix_map, body], dim=1), prefix + keep + int(fuse)


def combine(x: Tensor, mapping: Tensor, count: int, weight: Tensor) -> Tensor:
    """New tokens (batch, count, ...) as the `weight`-weighted average of the old tokens mapped to each."""
    slots = mapping + 1  # -1 (left the sequence) lands in slot 0, which is dropped
    expanded = slots.reshape(*slots.shape, *(1,) * (x.dim() - 2)).expand_as(x)
    weight = weight.to(x.dtype)
    summed = x.new_zeros(x.shape[0], count + 1, *x.shape[2:]).scatter_add_(
        1, expanded, x * weight.reshape(*weight.shape, *(1,) * (x.dim() - 2)))
    total = weight.new_zeros(x.shape[0], count + 1).scatter_add_(1, slots, weight)
    return summed[:, 1:] / total[:, 1:].clamp(min=1e-12).reshape(x.shape[0], count, *(1,) * (x.dim() - 2))


def combine_sizes(size: Tensor, mapping: Tensor, count: int) -> Tensor:
    """The size of each new token: the sum of the sizes mapped to it."""
    return size.new_zeros(size.shape[0], count + 1).scatter_add_(1, mapping + 1, size)[:, 1:]


@dataclass(frozen=True)
class MergeStep:
    """Merge `r` token pairs after this block's attention (ToMe)."""

    r: int


@dataclass(frozen=True)
class ClipStep:
    """Keep `keep_ratio` of the non-prefix tokens after this block's attention; `fuse` the rest into one (EViT)."""

    keep_ratio: float
    fuse: bool


@dataclass
class _ForwardState:
    """What one forward carries from block to block."""

    size: Tensor | None = None       # (batch, tokens); None while nothing was reduced (every size 1)
    position: Tensor | None = None   # a per-token companion reduced alongside (DETR's position embeddings)
    source: Tensor | None = None     # (batch, original tokens): the token carrying each original, -1 if frozen
    frozen: Tensor | None = None     # (batch, original tokens, channels): values of tokens that left unfused
    padding: Tensor | None = None    # (batch, tokens) bool, True for real tokens, before any reduction
    tokens: list[int] = field(default_factory=list)


class ScheduledTokenReducer(TokenReducer):
    """Applies a per-block schedule of `MergeStep` / `ClipStep` (None: leave that block alone).

    `prefix` tokens are never reduced. `importance` is "cls" or "mean" (see `compressor.ops.tokens.attend`).
    `keep_all_tokens` restores the full token map at the end (unmerge, frozen tokens back in place).
    """

    def __init__(self, steps: list[MergeStep | ClipStep | None], prefix: int, *, importance: str = "mean",
                 proportional_attention: bool = True, keep_all_tokens: bool = False):
        super().__init__()
        self.steps = list(steps)
        self.prefix = prefix
        self.importance = importance
        self.proportional_attention = proportional_attention
        self.keep_all_tokens = keep_all_tokens
        self.state = _ForwardState()
        #: tokens entering the first block, then leaving each block, in the last forward (the report's "tokens per
    #: layer")
        self.last_tokens: list[int] = []

    def add_steps(self, steps: list[MergeStep | ClipStep | None], **settings: Any) -> None:
        """Take a second pass's steps on blocks this schedule leaves alone, with that pass's own settings
        (`importance` from token_clip, `proportional_attention` from token_merge)."""
        taken = [index for index, step in enumerate(steps) if step is not None and self.steps[index] is not None]
        if taken:
            raise ValueError(f"block {taken[0]} already has a step; two token passes cannot share a block")
        self.steps = [new if new is not None else old for old, new in zip(self.steps, steps)]
        for name, value in settings.items():
            setattr(self, name, value)

    # --- the contract the adapters call ------------------------------------------------------------------------
    def start(self, hidden: Tensor, padding: Tensor | None = None, position: Tensor | None = None) -> None:
        self.state = _ForwardState(position=position, tokens=[hidden.shape[1]])
        if padding is not None and not bool(padding.all()):
            self.state.size = padding.to(hidden.dtype)
        self.state.padding = padding

    def attention_bias(self) -> Tensor | None:
        size = self.state.size
        return None if size is None else size_bias(size, self.proportional_attention)

    def position(self) -> Tensor | None:
        return self.state.position

    def size(self) -> Tensor | None:
        return self.state.size

    def importance_for(self, block: int) -> str | None:
        step = self.steps[block]
        return self.importance if isinstance(step, ClipStep) and step.keep_ratio < 1 else None

    def reduce(self, block: int, hidden: Tensor, metric: Tensor | None = None,
               importance: Tensor | None = None) -> Tensor:
        step = self.steps[block]
        state = self.state
        tokens = hidden.shape[1]
        ones = hidden.new_ones(hidden.shape[0], tokens)
        size = state.size if state.size is not None else ones
        found = None
        if isinstance(step, MergeStep):
            found = bipartite_merge_mapping(metric, step.r, self.prefix, state.size)
            weight = size
        elif isinstance(step, ClipStep) and step.keep_ratio < 1:
            keep = round(step.keep_ratio * (tokens - self.prefix))
            found = clip_mapping(importance, keep, self.prefix, step.fuse)
            weight = importance * (size > 0)
            if found is not None:  # kept tokens average only themselves: any positive weight is exact
                weight = torch.where(found[0] < self.prefix + keep, ones, weight)
        if found is None:
            state.tokens.append(tokens)
            return hidden
        mapping, count = found
        if self.keep_all_tokens:
            self._track(hidden, mapping)
        new_hidden = combine(hidden, mapping, count, weight)
        if state.position is not None:
            state.position = combine(state.position, mapping, count, weight)
        state.size = combine_sizes(size, mapping, count)
        state.tokens.append(count)
        return new_hidden

    @property
    def last_fractions(self) -> list[float]:
        """The fraction of the entering tokens each block left, in the last forward."""
        return [count / self.last_tokens[0] for count in self.last_tokens[1:]]

    def finish(self, hidden: Tensor) -> Tensor:
        state, self.state = self.state, _ForwardState()  # hold no tensors between forwards
        self.last_tokens = state.tokens
        if not self.keep_all_tokens or state.source is None:
            return hidden
        carried = gather_tokens(hidden, state.source.clamp(min=0))
        return torch.where((state.source >= 0)[..., None], carried, state.frozen)

    # --- unmerge bookkeeping -----------------------------------------------------------------------------------
    def _track(self, hidden: Tensor, mapping: Tensor) -> None:
        state = self.state
        if state.source is None:
            state.source = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
            state.frozen = torch.zeros_like(hidden)
        alive = state.source >= 0
        moved = mapping.gather(1, state.source.clamp(min=0))
        leaving = alive & (moved < 0)
        if bool(leaving.any()):
            state.frozen = torch.where(leaving[..., None], gather_tokens(hidden, state.source.clamp(min=0)),
                                       state.frozen)
        state.source = torch.where(alive, moved, state.source)


def block_attention(block, attention: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, scale: float
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
    """The attention step of a token-reducing block (see `TokenReducer`): (batch, heads, tokens, head_dim) q, k, v
    in; the attention output (batch, tokens, channels), ToMe's merge metric (the keys averaged over heads) and the
    importance the block's reducer asks for out."""
    reducer = block.token_reducer
    output, importance = attend(attention, query, key, value, scale, reducer.attention_bias(),
                                reducer.importance_for(block.token_block), reducer.size())
    return merge_heads(output), key.mean(dim=1), importance
