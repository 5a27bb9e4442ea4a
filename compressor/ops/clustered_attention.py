"""Attention computed for cluster prototypes only, then handed back to every member (ACT).

With queries clustered into C groups, softmax(P Kᵀ · scale + mask) V costs O(C·N) instead of O(N²): the C
prototypes (member means) attend once and each query takes its prototype's output. With keys clustered, a key
prototype (mean key, mean value) stands for its `n` members, so its logit gets + log n — the softmax then weighs
it as n copies, as ACT's WeightedSoftMax does. Rows (image × head) have different cluster counts, so prototypes
are padded to the largest count and one batched scaled_dot_product_attention serves them all. Everything here is
differentiable in the inputs (means, attention and gathers), so it can be trained through.

Inputs are read where they lie: HF builds q/k/v as (B, N, H·D) projections viewed as (B, H, N, D) through a
transpose, so `TokenTable` addresses their token vectors in that memory order instead of copying them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from compressor.ops.lsh import Clusters
from compressor.ops.native_act import cluster_means_natively


@dataclass(frozen=True)
class TokenTable:
    """The token vectors of a (B, H, N, D) tensor as one (B·H·N, D) table, in memory order, without copying.

    Contiguous tensors lie row by row, (b, h, n); HF's transposed views lie "heads-last", (b, n, h). Anything
    else is copied once into the contiguous order.
    """

    vectors: Tensor
    batch: int
    heads: int
    tokens: int
    heads_last: bool

    @classmethod
    def of(cls, x: Tensor) -> TokenTable:
        batch, heads, tokens, dim = x.shape
        if heads > 1 and not x.is_contiguous() and x.transpose(1, 2).is_contiguous():
            return cls(x.transpose(1, 2).view(-1, dim), batch, heads, tokens, True)
        return cls(x.reshape(-1, dim), batch, heads, tokens, False)

    @property
    def rows(self) -> int:
        return self.batch * self.heads

    def to_rows(self, per_token: Tensor) -> Tensor:
        """(B·H·N, ...) values in table order → contiguous (R, N, ...) in row order (a copy only when heads-last:
        rows are sorted and scanned next, and strided rows would make every one of those passes slow)."""
        trailing = per_token.shape[1:]
        if not self.heads_last:
            return per_token.view(self.rows, self.tokens, *trailing)
        by_token = per_token.view(self.batch, self.tokens, self.heads, *trailing)
        return by_token.transpose(1, 2).contiguous().view(self.rows, self.tokens, *trailing)

    def to_table(self, per_row: Tensor) -> Tensor:
        """(R, N) values in row order → (B·H·N,) in table order (inverse of `to_rows`)."""
        if not self.heads_last:
            return per_row.reshape(-1)
        return per_row.view(self.batch, self.heads, self.tokens).transpose(1, 2).contiguous().view(-1)

    def entries(self, positions: Tensor) -> Tensor:
        """(R, N) token positions within each row → (R·N,) table entries."""
        if not self.heads_last:
            row_starts = torch.arange(0, self.rows * self.tokens, self.tokens, device=positions.device)
            return (positions + row_starts[:, None]).reshape(-1)
        rows = torch.arange(self.rows, device=positions.device)[:, None]
        row_base = (rows // self.heads) * (self.tokens * self.heads) + rows % self.heads
        return (positions * self.heads + row_base).reshape(-1)

    def gather(self, values: Tensor, table_index: Tensor, out: Tensor | None = None) -> Tensor:
        """(M, D') rows picked by a (B·H·N,) index in table order → (B, H, N, D') view, laid out like the input
        (as scaled_dot_product_attention's output is); `out`, a (B·H·N, D') tensor to write them into."""
        return self.view_as_input(torch.index_select(values, 0, table_index, out=out))

    def view_as_input(self, vectors: Tensor) -> Tensor:
        """A (B·H·N, D') table in this table's order → (B, H, N, D') view."""
        if not self.heads_last:
            return vectors.view(self.batch, self.heads, self.tokens, -1)
        return vectors.view(self.batch, self.tokens, self.heads, -1).transpose(1, 2)


def _slot_index(ids: Tensor, num_clusters: int) -> Tensor:
    """(R, N) per-row cluster ids → (R, N) rows of the (R·num_clusters) prototype slots of all rows."""
    row_starts = torch.arange(0, ids.shape[0] * num_clusters, num_clusters, device=ids.device)
    return ids + row_starts[:, None]


def _slot_sizes(slot_index: Tensor, num_slots: int) -> Tensor:
    """(num_slots,) tokens per slot."""
    return torch.bincount(slot_index.reshape(-1), minlength=num_slots)


@dataclass(frozen=True)
class ClusterLayout:
    """How the tokens of R rows map onto R × num_clusters prototype slots (slots past a row's clusters are empty).

    Built once per clustering and shared by the reductions and the gather: `slot_index` (R, N) is each token's
    slot, `members` (R, N) each row's token positions ordered by slot, `sizes` (R·num_clusters,) the member counts
    (`divisors` the same as a float32 column with empty slots counted as 1: dividing floats by an int64 tensor
    takes torch's slow mixed-dtype path) and `slot_starts` where each slot's members begin.
    """

    num_clusters: int
    slot_index: Tensor
    members: Tensor
    sizes: Tensor
    divisors: Tensor
    slot_starts: Tensor

    @classmethod
    def build(cls, ids: Tensor, num_clusters: int, members: Tensor | None = None) -> ClusterLayout:
        """From per-row ids (R, N) and, optionally, each row's token positions ordered by id (saves a sort)."""
        if members is None:
            members = torch.argsort(ids, dim=1)
        slot_index = _slot_index(ids, num_clusters)
        sizes = _slot_sizes(slot_index, ids.shape[0] * num_clusters)
        divisors = sizes.clamp(min=1).to(torch.float32)[:, None]
        return cls(num_clusters, slot_index, members, sizes, divisors,
                   torch.cumsum(sizes, 0) - sizes)

    def means(self, table: TokenTable) -> Tensor:
        """(R·num_clusters, D) member means of the table's vectors, zero for empty slots.

        One embedding_bag sum walks the members slot by slot — a parallel segment sum with no scatter conflicts,
        differentiable in the vectors — then one division by the sizes (embedding_bag's "mean" mode is slower).
        """
        sums = F.embedding_bag(table.entries(self.members), table.vectors, self.slot_starts, mode="sum")
        return sums.div_(self.divisors.to(sums.dtype))

    def gather_index(self, table: TokenTable) -> Tensor:
        """(B·H·N,) each token's slot, in the memory order of `table` (what `TokenTable.gather` picks by, so the
        output is laid out like the input)."""
        return table.to_table(self.slot_index)


def query_prototypes(clusters: Clusters, table: TokenTable,
                     scratch_purpose: str | None = None) -> tuple[Tensor, Tensor]:
    """(the member means of every query cluster (R·C, D), each token's slot in table order (B·H·N,)).

    In inference one native call gives both (`native_act`; `scratch_purpose` as there); when a gradient must
    flow through the means, or the native kernel is unavailable, `ClusterLayout` does.
    """
    native = cluster_means_natively(table.vectors, table.batch, table.heads, table.tokens, table.heads_last,
                                    clusters, scratch_purpose)
    if native is not None:
        return native
    layout = ClusterLayout.build(clusters.ids, clusters.num_clusters, clusters.members)
    return layout.means(table), layout.gather_index(table)


def cluster_sizes(ids: Tensor, num_clusters: int) -> Tensor:
    """(R, num_clusters) member counts of per-row cluster ids (R, N); slots past a row's last cluster count 0."""
    rows = ids.shape[0]
    return _slot_sizes(_slot_index(ids, num_clusters), rows * num_clusters).view(rows, num_clusters)


def cluster_means(x: Tensor, ids: Tensor, num_clusters: int, members: Tensor | None = None) -> Tensor:
    """(R, N, D) → (R, num_clusters, D) means of each cluster's members (zero for empty slots).

    `members`, each row's token positions ordered by cluster id (`Clusters.members`), saves a sort.
    """
    layout = ClusterLayout.build(ids, num_clusters, members)
    return layout.means(TokenTable.of(x.unsqueeze(0))).view(ids.shape[0], num_clusters, -1)


def broadcast_to_members(prototype_values: Tensor, ids: Tensor) -> Tensor:
    """(R, C, D) per-cluster values → (R, N, D): every token takes its cluster's row."""
    rows, num_clusters, dim = prototype_values.shape
    flat_slots = _slot_index(ids, num_clusters).reshape(-1)
    return prototype_values.reshape(-1, dim).index_select(0, flat_slots).view(rows, ids.shape[1], dim)


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
    Returns (B, H, Nq, Dv), laid out in memory like the query (as scaled_dot_product_attention's output is).
    """
    batch, heads = query.shape[:2]
    if key_clusters is not None and key_bias is not None:
        raise ValueError("prototype_attention: with clustered keys, pass key padding as `valid` to cluster_tokens, "
                         "not as key_bias")
    attention_bias = key_bias
    if key_clusters is not None:
        num_key_clusters = key_clusters.num_clusters
        key_layout = ClusterLayout.build(key_clusters.ids, num_key_clusters, key_clusters.members)
        key, value = (key_layout.means(TokenTable.of(x)).view(batch, heads, num_key_clusters, -1)
                      for x in (key, value))
        attention_bias = key_prototype_bias(key_layout.sizes.view(batch * heads, num_key_clusters),
                                            key_clusters.valid_clusters, query.dtype)
        attention_bias = attention_bias.view(batch, heads, 1, num_key_clusters)
    if query_clusters is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias, scale=scale)

    num_query_clusters = query_clusters.num_clusters
    query_table = TokenTable.of(query)
    prototypes, gather_index = query_prototypes(query_clusters, query_table, "act_query_prototypes")
    gathered = None
    if not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        # the full-size output claimed first, before attention's own buffers can split the memory the previous
        # output freed (a fresh block costs a zero-filled page fault per 4 KiB; see compressor.ops.workspace)
        gathered = query.new_empty(query_table.vectors.shape[0], value.shape[-1])
    output = F.scaled_dot_product_attention(prototypes.view(batch, heads, num_query_clusters, -1), key, value,
                                            attn_mask=attention_bias, scale=scale)
    del prototypes, key, value, attention_bias
    return query_table.gather(output.reshape(batch * heads * num_query_clusters, -1), gather_index, out=gathered)
