"""Attention computed for cluster prototypes only, then handed back to every member (ACT).

With queries clustered into C groups, softmax(P Kᵀ · scale + mask) V costs O(C·N) instead of O(N²): the C
prototypes (member means) attend once and each query takes its prototype's output. With keys clustered, a key
prototype (mean key, mean value) stands for its `n` members, so its logit gets + log n — the softmax then weighs
it as n copies, as ACT's WeightedSoftMax does. Rows (image × head) have different cluster counts, so prototypes
are padded to the largest count and one batched scaled_dot_product_attention serves them all. Everything here is
differentiable in the inputs (means, attention and gathers), so it can be trained through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from compressor.ops.lsh import Clusters


def _slot_index(ids: Tensor, num_clusters: int) -> Tensor:
    """(R, N) per-row cluster ids → (R·N,) rows of the (R·num_clusters) prototype slots of all rows."""
    row_starts = torch.arange(ids.shape[0], device=ids.device)[:, None] * num_clusters
    return (ids + row_starts).reshape(-1)


def _gather_slots(prototype_values: Tensor, slot_index: Tensor) -> Tensor:
    """(R, C, D) prototype values → (len(slot_index), D) rows, one index_select (differentiable)."""
    dim = prototype_values.shape[-1]
    return prototype_values.reshape(-1, dim).index_select(0, slot_index)


@dataclass(frozen=True)
class ClusterLayout:
    """Flat indices that map the tokens of R rows onto R × num_clusters prototype slots (padding slots empty).

    Built once per clustering and shared by the reductions and the gather, so each costs one kernel:
    `slot_index` (R·N,) is each token's slot, `member_rows` (R·N,) the token rows listed slot by slot, `sizes`
    (R·num_clusters,) the member counts and `slot_starts` where each slot's members begin in `member_rows`.
    """

    rows: int
    tokens: int
    num_clusters: int
    slot_index: Tensor
    member_rows: Tensor
    sizes: Tensor
    slot_starts: Tensor

    @classmethod
    def build(cls, ids: Tensor, num_clusters: int, members: Tensor | None = None) -> ClusterLayout:
        """From per-row ids (R, N) and, optionally, each row's token positions ordered by id (saves a sort)."""
        rows, tokens = ids.shape
        if members is None:
            members = torch.argsort(ids, dim=1)
        slot_index = _slot_index(ids, num_clusters)
        member_rows = (members + torch.arange(rows, device=ids.device)[:, None] * tokens).reshape(-1)
        sizes = torch.bincount(slot_index, minlength=rows * num_clusters)
        return cls(rows, tokens, num_clusters, slot_index, member_rows, sizes, torch.cumsum(sizes, 0) - sizes)

    def means(self, x: Tensor) -> Tensor:
        """(R, N, D) → (R, num_clusters, D) member means, zero for empty slots.

        One embedding_bag sum walks the members slot by slot — a parallel segment sum with no scatter conflicts,
        differentiable in `x` — then one division by the sizes (embedding_bag's own "mean" mode is slower).
        """
        dim = x.shape[-1]
        sums = F.embedding_bag(self.member_rows, x.reshape(self.rows * self.tokens, dim), self.slot_starts,
                               mode="sum")
        return (sums / self.sizes.clamp(min=1)[:, None].to(sums.dtype)).view(self.rows, self.num_clusters, dim)

    def broadcast(self, prototype_values: Tensor) -> Tensor:
        """(R, num_clusters, D) → (R, N, D): every token takes its slot's row."""
        return _gather_slots(prototype_values, self.slot_index).view(self.rows, self.tokens, -1)

    def broadcast_heads_last(self, prototype_values: Tensor, batch: int) -> Tensor:
        """(R, num_clusters, D) → (B, H, N, D) laid out as (B, N, H, D) in memory.

        That is the layout scaled_dot_product_attention returns for HF's transposed (B, N, H, D) inputs, so the
        caller's transpose back to (B, N, H·D) needs no copy.
        """
        heads = self.rows // batch
        token_major = self.slot_index.view(batch, heads, self.tokens).transpose(1, 2).reshape(-1)
        return _gather_slots(prototype_values, token_major).view(batch, self.tokens, heads, -1).transpose(1, 2)


def cluster_sizes(ids: Tensor, num_clusters: int) -> Tensor:
    """(R, num_clusters) member counts of per-row cluster ids (R, N); slots past a row's last cluster count 0."""
    sizes = torch.bincount(_slot_index(ids, num_clusters), minlength=ids.shape[0] * num_clusters)
    return sizes.view(ids.shape[0], num_clusters)


def cluster_means(x: Tensor, ids: Tensor, num_clusters: int, members: Tensor | None = None) -> Tensor:
    """(R, N, D) → (R, num_clusters, D) means of each cluster's members (zero for empty slots).

    `members`, each row's token positions ordered by cluster id (`Clusters.members`), saves a sort.
    """
    return ClusterLayout.build(ids, num_clusters, members).means(x)


def broadcast_to_members(prototype_values: Tensor, ids: Tensor) -> Tensor:
    """(R, C, D) per-cluster values → (R, N, D): every token takes its cluster's row."""
    rows, tokens = ids.shape
    return _gather_slots(prototype_values, _slot_index(ids, prototype_values.shape[1])).view(rows, tokens, -1)


def key_prototype_bias(sizes: Tensor, valid_clusters: Tensor, dtype: torch.dtype) -> Tensor:
    """(R, C) additive logit bias of key prototypes: log(size), -inf for padding and padded-key clusters."""
    slots = torch.arange(sizes.shape[1], device=sizes.device)
    bias = sizes.to(dtype).log()
    return bias.masked_fill_(slots >= valid_clusters[:, None], float("-inf"))


def prototype_attention(query: Tensor, key: Tensor, value: Tensor, *, scale: float | None = None,
                        key_bias: Tensor | None = None, query_clusters: Clusters | None = None,
                        key_clusters: Clusters | None = None) -> Tensor:
    """softmax(Q Kᵀ · scale + bias) V on (B, H, N, D) tensors, with queries and/or keys replaced by prototypes.

    `query_clusters` / `key_clusters` (rows = B·H, from `lsh.cluster_tokens`) switch clustering on for that side;
    without either this is exact attention. `key_bias` — a bool (True = attend) or additive tensor broadcastable
    to (B, H, 1, Nk), the same for every query (key padding) — applies to unclustered keys; with clustered keys,
    padding is carried by the clusters (`valid_clusters`), so passing `key_bias` too is an error.
    Returns (B, H, Nq, Dv), laid out in memory like scaled_dot_product_attention's output for this query.
    """
    batch, heads, query_tokens, dim = query.shape
    rows = batch * heads
    if key_clusters is not None and key_bias is not None:
        raise ValueError("prototype_attention: with clustered keys, pass key padding as `valid` to cluster_tokens, "
                         "not as key_bias")
    attention_bias = key_bias
    if key_clusters is not None:
        key_tokens, num_key_clusters = key.shape[2], key_clusters.num_clusters
        key_layout = ClusterLayout.build(key_clusters.ids, num_key_clusters, key_clusters.members)
        key, value = (key_layout.means(x.reshape(rows, key_tokens, x.shape[-1])).view(
            batch, heads, num_key_clusters, x.shape[-1]) for x in (key, value))
        attention_bias = key_prototype_bias(key_layout.sizes.view(rows, num_key_clusters),
                                            key_clusters.valid_clusters, query.dtype)
        attention_bias = attention_bias.view(batch, heads, 1, num_key_clusters)
    if query_clusters is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias, scale=scale)

    num_query_clusters = query_clusters.num_clusters
    query_layout = ClusterLayout.build(query_clusters.ids, num_query_clusters, query_clusters.members)
    prototypes = query_layout.means(query.reshape(rows, query_tokens, dim))
    output = F.scaled_dot_product_attention(prototypes.view(batch, heads, num_query_clusters, dim), key, value,
                                            attn_mask=attention_bias, scale=scale)
    output = output.reshape(rows, num_query_clusters, output.shape[-1])
    heads_last = heads > 1 and query.stride(1) < query.stride(2)  # HF's (B, N, H, D) tensor seen as (B, H, N, D)
    if heads_last:
        return query_layout.broadcast_heads_last(output, batch)
    return query_layout.broadcast(output).view(batch, heads, query_tokens, output.shape[-1])
