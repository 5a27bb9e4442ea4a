"""Tensor kernels with no model knowledge.

Passes wire these into models through an adapter; the kernels themselves only see (batch, heads, tokens, dim)
tensors, so they can be tested and benchmarked on their own.
"""

from compressor.ops.act_kernel import ACTKernel
from compressor.ops.clustered_attention import (broadcast_to_members, cluster_means, cluster_sizes,
                                                prototype_attention)
from compressor.ops.lsh import Clusters, cluster_ids, cluster_tokens, combine_codes, e2lsh_codes, group_by_key

__all__ = [
    "ACTKernel",
    "Clusters",
    "broadcast_to_members",
    "cluster_ids",
    "cluster_means",
    "cluster_sizes",
    "cluster_tokens",
    "combine_codes",
    "e2lsh_codes",
    "group_by_key",
    "prototype_attention",
]
