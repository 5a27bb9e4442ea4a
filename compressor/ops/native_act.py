"""ACT's clustering stages as native calls (`csrc/act_grouping.cpp`), with the torch path as the fallback.

The torch path — `lsh.e2lsh_codes`, `combine_codes`, `group_by_key` — takes some forty calls, each a pass over
megabytes of codes; at the DETR-DC5 encoder's size that was most of ACT's overhead. The native kernel computes
each token's codes in registers, folds them into keys and groups every row in one parallel region. Keys and
grouping follow the torch path's definitions exactly (same keys, same cluster numbering, same members order);
only the projection sums in its own order, so a code within float32 rounding of a bucket edge can differ by one
from the BLAS product, as it can between two BLAS libraries (tests/test_act_native.py checks both: identical
clusters when the sums are exact, the same partition on real-sized random tokens).

`cluster_means_natively` then averages each cluster's members (the prototypes) and lists each token's
prototype slot for the gather back, bit for bit what `ClusterLayout.means` and `ClusterLayout.gather_index` give,
without building the layout; it serves inference, where no gradient has to flow through the means.

`None` tells the caller to take the torch path: no kernel here (no compiler, COMPRESSOR_NATIVE=0), an input
outside what it handles (not CPU, more than 2^14 tokens a row or 64 rounds, codes too large for its exact
sums), or an active torch dispatch mode — FlopCounterMode must see the same matmuls whether or not this machine
has a compiler (FLOP figures in reports do not depend on it), and fake or traced tensors have no data to read.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from compressor.ops.lsh import Clusters, _hash_multipliers
from compressor.ops.native_build import native_function
from compressor.ops.workspace import fresh_or_scratch, scratch

#: the kernel packs key (49 bits) and position side by side in 63 bits
MAX_TOKENS = 2**14
#: codes are accumulated in at most 8 registers of 8 floats
MAX_ROUNDS = 64


_POINTER, _SIZE, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _kernel():
    """act_group_tokens (see csrc/act_grouping.cpp for the arguments), or None."""
    return native_function("act_grouping", "act_group_tokens", (
        _POINTER, _SIZE, _POINTER, _POINTER, _SIZE, _SIZE, _SIZE, _SIZE, _INT, _POINTER, _POINTER, _POINTER,
        _POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _INT))


def _means_kernel():
    """act_cluster_means (see csrc/act_grouping.cpp for the arguments), or None."""
    return native_function("act_grouping", "act_cluster_means", (
        _POINTER, _SIZE, _SIZE, _SIZE, _SIZE, _INT, _POINTER, _POINTER, _POINTER, _SIZE, _POINTER, _POINTER, _INT))


def native_grouping_available() -> bool:
    """Whether the native kernel is built and loaded (building it now if needed)."""
    return _kernel() is not None


def _torch_is_watching() -> bool:
    """A dispatch mode (FLOP counting, fake tensors) or a compiler trace is active."""
    return torch._C._len_torch_dispatch_stack() > 0 or torch.compiler.is_compiling()


def group_tokens_natively(vectors: Tensor, projections: Tensor, offsets_unit: Tensor, bucket_width: Tensor | float,
                          batch: int, heads: int, tokens: int, heads_last: bool, valid: Tensor | None = None,
                          scratch_purpose: str | None = None) -> Clusters | None:
    """The clusters of token `vectors` (B·H·N, D) laid out as a `TokenTable` (rows (b, h, n), or (b, n, h) when
    `heads_last`) under E2LSH `projections` (L, D), `offsets_unit` (L,) and `bucket_width` — what
    `cluster_tokens(e2lsh_codes(...), valid)` gives, rows = B·H; `valid` (B·H, N) bool marks real tokens.
    `scratch_purpose`: put ids and members in that scratch buffer (`workspace`) instead of fresh memory, for a
    caller done with them before the purpose comes round again. None: use the torch path instead."""
    kernel = _kernel()
    rounds, dim = projections.shape
    if (kernel is None or vectors.device.type != "cpu" or not 1 <= tokens <= MAX_TOKENS or rounds > MAX_ROUNDS
            or vectors.shape != (batch * heads * tokens, dim) or _torch_is_watching()):
        return None
    vectors = vectors.detach().to(torch.float32).contiguous()
    scaled = (projections.detach().float() / bucket_width).contiguous()  # as e2lsh_codes scales them
    offsets = offsets_unit.detach().float().contiguous()
    if valid is not None:
        valid = valid.to(device="cpu", dtype=torch.bool).contiguous()
    rows = batch * heads
    multipliers = _hash_multipliers(rounds, vectors.device)
    row_keys = scratch((rows * tokens,), torch.int64, vectors.device, "act_row_keys")
    ids, members = fresh_or_scratch((2, rows, tokens), torch.int64, vectors.device, scratch_purpose)
    # the per-row counts in a tensor of their own: statistics keep them for a while, and a view would keep the
    # whole (2, R, N) buffer alive with them
    counts_per_row, valid_clusters, valid_tokens = torch.empty(3, rows, dtype=torch.int64)
    status = kernel(vectors.data_ptr(), dim, scaled.data_ptr(), offsets.data_ptr(), rounds, batch, heads, tokens,
                    int(heads_last), None if valid is None else valid.data_ptr(), multipliers.data_ptr(),
                    row_keys.data_ptr(), ids.data_ptr(), members.data_ptr(), counts_per_row.data_ptr(),
                    valid_clusters.data_ptr(), valid_tokens.data_ptr(), torch.get_num_threads())
    if status != 0:
        return None
    return Clusters(ids, members, counts_per_row, valid_clusters, valid_tokens, int(counts_per_row.max()))


def cluster_means_natively(vectors: Tensor, batch: int, heads: int, tokens: int, heads_last: bool,
                           clusters: Clusters, scratch_purpose: str | None = None) -> tuple[Tensor, Tensor] | None:
    """(member means (B·H·C, D), each token's slot in table order (B·H·N,)) of `clusters` over token `vectors`
    (B·H·N, D) laid out as a `TokenTable`, C = clusters.num_clusters; empty slots are zero. Not differentiable:
    None when a gradient must flow to `vectors` (and in the other cases above): use `ClusterLayout` instead.

    `scratch_purpose`: write both into this thread's scratch buffers of that purpose (`workspace`), for a caller
    done with them before the purpose comes round again — a forward then makes no fresh megabyte-sized
    allocations here, each of which can cost a page fault per 4 KiB.
    """
    kernel = _means_kernel()
    rows, dim = batch * heads, vectors.shape[-1]
    if (kernel is None or vectors.device.type != "cpu" or vectors.dtype != torch.float32
            or not vectors.is_contiguous() or vectors.shape[0] != rows * tokens
            or (torch.is_grad_enabled() and vectors.requires_grad)
            or clusters.ids.shape != (rows, tokens) or _torch_is_watching()):
        return None
    ids, members, counts = (t.contiguous() for t in (clusters.ids, clusters.members, clusters.counts_per_row))
    means = fresh_or_scratch((rows * clusters.num_clusters, dim), torch.float32, vectors.device, scratch_purpose)
    gather_index = fresh_or_scratch((rows * tokens,), torch.int64, vectors.device, scratch_purpose)
    status = kernel(vectors.data_ptr(), dim, batch, heads, tokens, int(heads_last), ids.data_ptr(),
                    members.data_ptr(), counts.data_ptr(), clusters.num_clusters, means.data_ptr(),
                    gather_index.data_ptr(), torch.get_num_threads())
    return (means, gather_index) if status == 0 else None
