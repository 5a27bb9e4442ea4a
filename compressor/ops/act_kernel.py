"""The ACT attention kernel: E2LSH-clustered queries and/or keys, attention per prototype (Zheng et al. 2020).

A drop-in for softmax(q kᵀ · scale + mask) v behind the `AttentionKernel` contract. The hash projections and
offsets are persistent buffers drawn from the seed, so they travel with the model's weights and a reloaded model
clusters (and answers) exactly as before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from compressor.ops.attention_kernel import AttentionKernel
from compressor.ops.clustered_attention import TokenTable, prototype_attention
from compressor.ops.lsh import Clusters, combine_codes, e2lsh_codes, group_by_key
from compressor.ops.native_act import group_tokens_natively
from compressor.ops.workspace import scratch

CLUSTER_MODES = ("queries", "keys", "both")
#: an additive mask entry at or below this is padding: exp(-1e4) is 0 in float32, so the key gets no weight anyway
PADDING_BIAS = -1e4


class PrototypeStatistics:
    """Running totals of one clustered side (queries or keys) over forwards, counting valid tokens only.

    A forward only queues its per-row counts (no extra kernels or syncs on the hot path); they are summed when a
    total is read, or every `FOLD_EVERY` forwards to bound memory.
    """

    FOLD_EVERY = 64

    def __init__(self):
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._tokens = self._prototypes = self._rows = 0
        self._fraction_sum = 0.0

    def record(self, clusters: Clusters) -> None:
        self._pending.append((clusters.valid_tokens, clusters.valid_clusters))
        if len(self._pending) >= self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        tokens, prototypes = (torch.cat(column).double() for column in zip(*self._pending))
        self._pending.clear()
        fractions = prototypes / tokens.clamp(min=1)
        totals = torch.stack([tokens.sum(), prototypes.sum(), fractions.sum(), (tokens > 0).sum()]).tolist()
        self._tokens += int(totals[0])
        self._prototypes += int(totals[1])
        self._fraction_sum += totals[2]
        self._rows += int(totals[3])

    @property
    def tokens(self) -> int:
        """Valid tokens seen."""
        self._fold()
        return self._tokens

    @property
    def prototypes(self) -> int:
        """Clusters of valid tokens formed."""
        self._fold()
        return self._prototypes

    @property
    def fraction(self) -> float:
        """Mean over rows (image × head) and forwards of prototypes / valid tokens (nan before any forward)."""
        self._fold()
        return self._fraction_sum / self._rows if self._rows else math.nan

    def __repr__(self) -> str:
        return f"PrototypeStatistics(tokens={self.tokens}, prototypes={self.prototypes}, fraction={self.fraction:.4f})"


def key_padding_mask(attention_mask: Tensor | None, batch: int, heads: int, key_tokens: int,
                     allow_bias: bool) -> tuple[Tensor | None, Tensor | None]:
    """Split a key-padding mask into (its first query row, key validity (B·H, Nk) bool), or (None, None).

    ACT gives every query of a cluster one output, so it can only honour masks that are the same for every query
    (key padding, as HF builds for padded batches and DETR pixel masks). A mask whose first and last query rows
    differ (e.g. causal) is refused. Additive entries <= PADDING_BIAS mark padding; finite biases above it are
    kept exactly for unclustered keys but refused when keys are clustered (`allow_bias=False`), since a key
    prototype would have to average them.
    """
    if attention_mask is None:
        return None, None
    mask = attention_mask.reshape((1,) * (4 - attention_mask.dim()) + tuple(attention_mask.shape))
    first_row = mask[..., :1, :]
    if mask.shape[-2] > 1 and not torch.equal(first_row, mask[..., -1:, :]):
        raise ValueError("ACT attention supports key-padding masks only (the same key mask for every query), "
                         f"but the attention mask of shape {tuple(attention_mask.shape)} differs between queries; "
                         "leave this layer exact.")
    if first_row.dtype == torch.bool:
        valid = first_row
    else:
        valid = first_row > PADDING_BIAS
        if not allow_bias and bool(first_row.masked_fill(~valid, 0).ne(0).any()):
            raise ValueError("ACT with clustered keys needs a padding-only attention mask (0 where attended, "
                             "-inf or the dtype minimum where padded), but this mask adds finite biases; cluster "
                             "queries only or leave this layer exact.")
    key_valid = valid.expand(batch, heads, 1, key_tokens).reshape(batch * heads, key_tokens)
    return first_row, key_valid


class ACTKernel(AttentionKernel):
    """ACT attention for (B, H, N, D) inputs: cluster `queries`, `keys` or `both` with `rounds` E2LSH rounds.

    `enabled = False` runs exact scaled_dot_product_attention instead (calibration switches layers on and off).
    Clustering statistics accumulate in `query_statistics` / `key_statistics` (plain attributes, not saved);
    `uncounted_flops` holds the last forward's work that FlopCounterMode cannot see.
    """

    def __init__(self, head_dim: int, rounds: int = 32, bucket_width: float = 8.0, cluster: str = "queries",
                 seed: int = 0):
        super().__init__()
        if cluster not in CLUSTER_MODES:
            raise ValueError(f"ACT cluster must be one of {', '.join(CLUSTER_MODES)}, got {cluster!r}")
        if rounds < 1:
            raise ValueError(f"ACT rounds must be at least 1, got {rounds}")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projections", torch.randn(rounds, head_dim, generator=generator))
        self.register_buffer("offsets_unit", torch.rand(rounds, generator=generator))
        self.register_buffer("bucket_width", torch.tensor(0.0))
        self.set_bucket_width(bucket_width)
        self.cluster = cluster
        self.enabled = True
        self.uncounted_flops = 0
        self.reset_statistics()

    @property
    def rounds(self) -> int:
        return self.projections.shape[0]

    @property
    def head_dim(self) -> int:
        return self.projections.shape[1]

    def set_bucket_width(self, bucket_width: float) -> None:
        """Change r in place (calibration tries several); wider buckets give fewer, coarser clusters."""
        if not bucket_width > 0:
            raise ValueError(f"ACT bucket width must be > 0, got {bucket_width}")
        self.bucket_width.fill_(float(bucket_width))

    def reset_statistics(self) -> None:
        self.query_statistics = PrototypeStatistics()
        self.key_statistics = PrototypeStatistics()

    def prototype_fraction(self) -> float:
        """Mean prototypes / valid tokens per row over all forwards since the last reset: the clustered side's
        share of attention work (keys when cluster == "keys", else queries)."""
        side = self.key_statistics if self.cluster == "keys" else self.query_statistics
        return side.fraction

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, rounds={self.rounds}, bucket_width={float(self.bucket_width):g}, "
                f"cluster={self.cluster!r}, enabled={self.enabled}")

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None = None,
                scale: float | None = None) -> Tensor:
        if not self.enabled:
            self.uncounted_flops = 0
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        batch, heads, query_tokens, _ = query.shape
        key_tokens = key.shape[2]
        clusters_queries = self.cluster in ("queries", "both")
        clusters_keys = self.cluster in ("keys", "both")
        key_mask_row, key_valid = key_padding_mask(attention_mask, batch, heads, key_tokens,
                                                   allow_bias=not clusters_keys)
        # In self-attention a padded key position is also a padded query: keep those apart from real queries.
        query_valid = key_valid if query_tokens == key_tokens else None
        query_clusters = self.clusters_of(query, query_valid, "act_query_clusters") if clusters_queries else None
        key_clusters = self.clusters_of(key, key_valid, "act_key_clusters") if clusters_keys else None
        output = prototype_attention(query, key, value, scale=scale,
                                     key_bias=None if clusters_keys else key_mask_row,
                                     query_clusters=query_clusters, key_clusters=key_clusters)
        if query_clusters is not None:
            self.query_statistics.record(query_clusters)
        if key_clusters is not None:
            self.key_statistics.record(key_clusters)
        self.uncounted_flops = self._uncounted_flops(query, key, value, query_clusters, key_clusters)
        return output

    def clusters_of(self, x: Tensor, valid: Tensor | None = None, scratch_purpose: str | None = None) -> Clusters:
        """The clusters of (B, H, N, D) tokens, rows = B·H; `valid` (B·H, N) bool marks real tokens.
        `scratch_purpose`: where the native path may keep ids and members (see `native_act`); the forward
        uses one per side, as it is done with them before the next forward.

        Hashes the token vectors where they lie in memory (no copy of HF's transposed q/k) and groups per row:
        in one native call where the kernel is available (`native_act`), else in torch, with the codes in
        scratch memory (consumed at once by `combine_codes`).
        """
        table = TokenTable.of(x)
        clusters = group_tokens_natively(table.vectors, self.projections, self.offsets_unit, self.bucket_width,
                                         table.batch, table.heads, table.tokens, table.heads_last, valid,
                                         scratch_purpose)
        if clusters is None:  # no native kernel here, or an input it leaves to torch
            codes = scratch((table.vectors.shape[0], self.rounds), torch.float32, x.device, "e2lsh_codes")
            e2lsh_codes(table.vectors, self.projections, self.offsets_unit, self.bucket_width, dtype=torch.float32,
                        out=codes)
            clusters = group_by_key(table.to_rows(combine_codes(codes)), valid)
        return clusters

    def _uncounted_flops(self, query: Tensor, key: Tensor, value: Tensor, query_clusters: Clusters | None,
                         key_clusters: Clusters | None) -> int:
        """Estimated work outside torch's matmul/attention FLOP formulas.

        The hash projection and the limb matmul that folds codes into keys are torch matmuls, which the counter
        sees. Per clustered side of R rows × N tokens the rest is: offset, floor and the exactness bound over the
        codes (3·R·N·L), the sort (R·N·log2 N) and numbering (3·R·N), member means (R·N·D, + R·C·D divisions).
        Queries add the gather back (R·Nq·Dv); keys average values too and add the log-size bias (R·C).
        """
        batch, heads, query_tokens, dim = query.shape
        rows, value_dim = batch * heads, value.shape[-1]

        def clustering(tokens: int) -> int:
            return rows * tokens * (3 * self.rounds + math.ceil(math.log2(max(tokens, 2))) + 3)

        flops = 0
        if query_clusters is not None:
            flops += clustering(query_tokens) + rows * query_tokens * (dim + value_dim)
            flops += rows * query_clusters.num_clusters * dim
        if key_clusters is not None:
            key_tokens, num_clusters = key.shape[2], key_clusters.num_clusters
            flops += clustering(key_tokens) + rows * key_tokens * (dim + value_dim)
            flops += rows * num_clusters * (dim + value_dim + 1)
        return int(flops)
