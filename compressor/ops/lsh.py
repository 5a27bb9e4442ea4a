"""E2LSH codes and the exact grouping of tokens that share all their codes (ACT, Zheng et al. 2020).

A token v gets L codes h_l(v) = floor((a_l·v + b_l) / r); tokens whose L-tuples are identical form one cluster.
Comparing L-tuples directly would need L sorting passes, so each tuple is first folded into one 48-bit key by two
independent modular hashes (distinct tuples share a key with probability about 2^-48), and each row is sorted
once by key: equal keys are adjacent, a cumulative count of key changes numbers the clusters 0..C-1 in sorted
order, and a scatter takes the numbers back to token order. Everything is batched over rows (image × head).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

#: the modulus of both hashes, the largest prime below 2^24: two distinct code tuples share a key with probability
#: about 1/P² = 2^-48; residue × multiplier stays below 2^48 (no int64 overflow anywhere); and a key (< 2^49 with
#: the padding namespace) leaves 14 bits beside it in an int64 for the token position (see `sort_rows`)
HASH_PRIME = 2**24 - 3
#: added to the keys of padded tokens: their keys can never equal a valid token's key and sort after all of them
PADDING_NAMESPACE = HASH_PRIME**2
#: every key, padded or not, is below 2^KEY_BITS
KEY_BITS = (2 * PADDING_NAMESPACE).bit_length()
#: the seed of the fixed random multipliers of the two hashes (part of the definition of a key, like a constant)
_MULTIPLIER_SEED = 0x5EEDAC7
#: integers below 2^this are exact in float32
_FLOAT32_MANTISSA_BITS = 24
#: Σ_l |c_l| below this leaves room for limbs of at least one bit (and keeps Σ_l c_l·m_l < 2^47, exact in float64)
_LIMB_SUM_BOUND = 2 ** (_FLOAT32_MANTISSA_BITS - 1)


class Clusters(NamedTuple):
    """The clusters of every row (rows = flattened leading dimensions, e.g. image × head).

    `ids` (R, N) numbers each token's cluster 0..C_r-1 within its row; `members` (R, N) lists each row's token
    positions ordered by cluster id (what a segment reduction walks, saving a second sort); `counts_per_row` (R,)
    is C_r; `valid_clusters` (R,) counts the clusters of valid tokens, which are numbered first; `valid_tokens`
    (R,) counts valid tokens; `num_clusters` is max C_r as a Python int (the padded prototype count).
    """

    ids: Tensor
    members: Tensor
    counts_per_row: Tensor
    valid_clusters: Tensor
    valid_tokens: Tensor
    num_clusters: int


def e2lsh_codes(x: Tensor, projections: Tensor, offsets_unit: Tensor, bucket_width: Tensor | float,
                dtype: torch.dtype = torch.int64, out: Tensor | None = None) -> Tensor:
    """E2LSH codes floor((a·x + b) / r) of (..., N, D) tokens: (..., N, L).

    `projections` (L, D) holds the a_l, `offsets_unit` (L,) in [0, 1) the b_l / r. The projection is one torch
    addmm (so FlopCounterMode sees it) of x with a / r on top of b / r, followed by floor, in float32 whatever the
    input dtype (bucket edges need the precision). `dtype=torch.float32` returns the same integers as floats,
    which `combine_codes` consumes without a conversion pass; `out`, a float32 tensor to write them into (a
    workspace kept across calls spares allocating — and the OS zero-filling — megabytes of fresh pages per call).
    """
    x = x.detach()
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    leading, dim = x.shape[:-1], x.shape[-1]
    scaled = (projections.float() / bucket_width).t()
    flat_out = None if out is None else out.view(-1, projections.shape[0])
    codes = torch.addmm(offsets_unit.float(), x.reshape(-1, dim), scaled, out=flat_out)
    codes = codes.floor_().view(*leading, -1)
    return codes if dtype == torch.float32 else codes.to(dtype)


@functools.lru_cache(maxsize=None)
def _hash_multipliers(rounds: int, device: torch.device) -> Tensor:
    """The (rounds, 2) int64 multipliers of the two hashes, in [1, HASH_PRIME)."""
    generator = torch.Generator().manual_seed(_MULTIPLIER_SEED)
    return torch.randint(1, HASH_PRIME, (rounds, 2), generator=generator).to(device)


@functools.lru_cache(maxsize=None)
def _multiplier_limbs(rounds: int, limb_bits: int, device: torch.device) -> Tensor:
    """The multipliers cut into `limb_bits`-bit limbs, lowest first: (2·k, rounds) float32, hash-major.

    limbs @ codesᵀ is exact in float32 while Σ_l |c_l| · 2^limb_bits <= 2^24.
    """
    multipliers = _hash_multipliers(rounds, device)
    limbs_per_multiplier = -(-HASH_PRIME.bit_length() // limb_bits)
    shifts = torch.arange(limbs_per_multiplier, device=device) * limb_bits
    limbs = (multipliers[:, :, None] >> shifts) & (2**limb_bits - 1)  # (rounds, 2, k)
    return limbs.reshape(rounds, -1).t().contiguous().to(torch.float32)


def _float32_matmul_is_ieee(device: torch.device) -> bool:
    """False when reduced-precision float32 matmuls are allowed on `device` (e.g. after
    torch.set_float32_matmul_precision("medium"), oneDNN may run them in bf16), which would round the limb sums."""
    backend = {"cpu": torch.backends.mkldnn, "cuda": torch.backends.cuda}.get(device.type)
    if backend is None:
        return False
    for setting in (backend.matmul.fp32_precision, getattr(backend, "fp32_precision", "none"),
                    torch.backends.fp32_precision):
        if setting != "none":  # "none" defers to the next, more general setting
            return setting == "ieee"
    return True


def combine_codes(codes: Tensor) -> Tensor:
    """One int64 key in [0, HASH_PRIME²) per L-tuple of codes: (..., L) → (...).

    key = h_1·P + h_2 with h_j = Σ_l c_l·m_lj mod P. When Σ_l |c_l| < 2^23 (always, unless the bucket width is
    tiny against the tokens), one float32 matmul against the multipliers cut into limbs small enough that no sum
    rounds (`_multiplier_limbs`; float64 if float32 matmuls may run in reduced precision) gives exact per-limb
    sums, reassembled in int64 — cheaper than converting every code to float64. The product is taken as
    limbs (2k, L) @ codesᵀ (L, M): CPU BLAS runs this short, wide shape several times faster than the tall,
    narrow codes @ limbsᵀ, and each limb's sums come out contiguous. Otherwise the codes are reduced mod P and
    the products summed in int64, each product below 2^48. Nothing relies on integer overflow, and both paths
    give the same key.
    """
    rounds = codes.shape[-1]
    flat_codes = codes.reshape(-1, rounds)
    smallest, largest = torch.aminmax(flat_codes)
    sum_bound = rounds * max(-int(smallest), int(largest))
    if sum_bound < _LIMB_SUM_BOUND:
        limb_bits = _FLOAT32_MANTISSA_BITS - sum_bound.bit_length()
        limbs = _multiplier_limbs(rounds, limb_bits, codes.device)
        limb_dtype = torch.float32 if _float32_matmul_is_ieee(codes.device) else torch.float64
        limb_sums = torch.mm(limbs.to(limb_dtype), flat_codes.t().to(limb_dtype)).to(torch.int64)
        limb_sums = limb_sums.view(2, -1, flat_codes.shape[0])
        sums = limb_sums[:, -1]
        for limb in range(limb_sums.shape[1] - 2, -1, -1):  # Horner over the few limbs, highest first, in place
            sums = limb_sums[:, limb].add_(sums, alpha=2**limb_bits)
        hashes = sums.remainder_(HASH_PRIME)
    else:
        residues = torch.remainder(flat_codes.to(torch.int64), HASH_PRIME)[:, :, None]
        terms = torch.remainder(residues * _hash_multipliers(rounds, codes.device), HASH_PRIME)
        hashes = torch.remainder(terms.sum(dim=1), HASH_PRIME).t()
    return torch.add(hashes[1], hashes[0], alpha=HASH_PRIME).view(codes.shape[:-1])


def sort_rows(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Each row of (R, N) int64 keys in [0, 2^KEY_BITS) sorted ascending: (sorted keys, positions in that order).

    On CPU, torch.sort drags (key, index) pairs through a generic zip iterator and is about 6x slower than numpy's
    vectorised sort of plain int64 values, so when the position fits beside the key (N <= 2^14) each pair is packed
    into one int64, key · 2^b + position, sorted in place by numpy and unpacked; ties come out by position.
    """
    rows, tokens = keys.shape
    position_bits = max(1, (tokens - 1).bit_length())
    if keys.device.type != "cpu" or KEY_BITS + position_bits > 63:
        return torch.sort(keys, dim=1)
    packed = torch.add(torch.arange(tokens, device=keys.device), keys, alpha=2**position_bits)
    packed.numpy().sort(axis=1)
    return packed >> position_bits, packed & (2**position_bits - 1)


def group_by_key(keys: Tensor, valid: Tensor | None = None) -> Clusters:
    """Group the tokens of each row of (R, N) keys (from `combine_codes`): equal keys, one cluster; see `Clusters`.

    `valid` (R, N) bool marks real tokens: padded ones are keyed in a separate namespace, so they never share a
    cluster with a valid token, and are numbered after every valid cluster.
    """
    rows, tokens = keys.shape
    keys = keys.contiguous()  # every pass below walks rows
    if valid is not None:
        keys = torch.add(keys, ~valid, alpha=PADDING_NAMESPACE)
    sorted_keys, members = sort_rows(keys)
    sorted_ids = torch.zeros_like(members)
    torch.cumsum(sorted_keys[:, 1:] != sorted_keys[:, :-1], dim=1, out=sorted_ids[:, 1:])
    ids = torch.empty_like(sorted_ids).scatter_(1, members, sorted_ids)
    counts_per_row = sorted_ids[:, -1] + 1
    if valid is None:
        valid_tokens = torch.full_like(counts_per_row, tokens)
        valid_clusters = counts_per_row
    else:
        valid_tokens = valid.sum(dim=1)
        last_valid_id = sorted_ids.gather(1, (valid_tokens - 1).clamp(min=0)[:, None]).squeeze(1)
        valid_clusters = torch.where(valid_tokens > 0, last_valid_id + 1, 0)
    return Clusters(ids, members, counts_per_row, valid_clusters, valid_tokens, int(counts_per_row.max()))


def cluster_tokens(codes: Tensor, valid: Tensor | None = None) -> Clusters:
    """Group the tokens of each row by their L-tuple of codes (..., N, L); rows = flattened leading dimensions.

    `valid` (..., N) bool marks real tokens (see `group_by_key`). Integer-valued float codes are fine.
    """
    tokens = codes.shape[-2]
    keys = combine_codes(codes).reshape(-1, tokens)
    return group_by_key(keys, None if valid is None else valid.reshape(-1, tokens))


def cluster_ids(codes: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """`(ids, counts_per_row, valid_clusters)` of `cluster_tokens` (rows = flattened leading dimensions)."""
    clusters = cluster_tokens(codes, valid)
    return clusters.ids, clusters.counts_per_row, clusters.valid_clusters
