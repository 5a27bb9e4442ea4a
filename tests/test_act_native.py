"""The native ACT kernels (compressor/ops/csrc/act_grouping.cpp) against the torch path they stand in for.

The native hash-and-group call must give the torch path's clusters: bit for bit when the projection sums are
exact (so the summation order cannot matter), the same partition on real-sized random tokens. The native means
and gather index must equal ClusterLayout's bit for bit. The build must cache, fall back cleanly and obey the
off switch. Timing is benchmarks/act_speed.py's job, not this file's.
"""

from __future__ import annotations

import ctypes
import logging

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from compressor.ops import ACTKernel, e2lsh_codes, group_by_key, native_act, native_build
from compressor.ops.clustered_attention import ClusterLayout, TokenTable
from compressor.ops.lsh import combine_codes


def hf_layout(x):
    """The same values laid out as HF makes q/k/v: a (B, N, H·D) projection viewed as (B, H, N, D)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def torch_clusters(kernel, table, valid=None):
    codes = e2lsh_codes(table.vectors, kernel.projections, kernel.offsets_unit, kernel.bucket_width)
    return group_by_key(table.to_rows(combine_codes(codes)), valid)


def native_clusters(kernel, table, valid=None):
    return native_act.group_tokens_natively(table.vectors, kernel.projections, kernel.offsets_unit,
                                            kernel.bucket_width, table.batch, table.heads, table.tokens,
                                            table.heads_last, valid)


def assert_same_clusters(native, reference):
    assert native is not None
    for name in ("ids", "members", "counts_per_row", "valid_clusters", "valid_tokens"):
        assert torch.equal(getattr(native, name), getattr(reference, name)), name
    assert native.num_clusters == reference.num_clusters


def exactly_summable_kernel(dim, rounds, seed):
    """A kernel whose projections and offsets are multiples of 1/8 (bucket width 1): with small integer tokens
    every partial sum of the projection is exact in float32, whatever the summation order."""
    generator = torch.Generator().manual_seed(seed)
    kernel = ACTKernel(dim, rounds=rounds, bucket_width=1.0, seed=seed)
    kernel.projections.copy_(torch.randint(-8, 9, (rounds, dim), generator=generator) / 8)
    kernel.offsets_unit.copy_(torch.randint(0, 8, (rounds,), generator=generator) / 8)
    return kernel


def test_native_kernels_build_on_this_machine():
    assert native_act.native_grouping_available()


@pytest.mark.parametrize("layout", ["contiguous", "hf"])
@pytest.mark.parametrize("padded", [False, True], ids=["all-valid", "padded"])
@pytest.mark.parametrize("rounds", [1, 7, 32, 33, 64])
def test_native_grouping_equals_torch_grouping_when_sums_are_exact(layout, padded, rounds):
    batch, heads, tokens, dim = 2, 3, 301, 16
    generator = torch.Generator().manual_seed(rounds)
    # few distinct integer tokens, so clusters are large and many
    centres = torch.randint(-3, 4, (batch, heads, 40, dim), generator=generator).float()
    tokens_x = torch.gather(centres, 2, torch.randint(0, 40, (batch, heads, tokens, 1), generator=generator)
                            .expand(-1, -1, -1, dim))
    x = hf_layout(tokens_x) if layout == "hf" else tokens_x
    valid = None
    if padded:
        valid = torch.rand(batch * heads, tokens, generator=generator) > 0.3
        valid[0] = False  # a row with no valid token at all
    kernel = exactly_summable_kernel(dim, rounds, seed=rounds)
    table = TokenTable.of(x)
    assert table.heads_last == (layout == "hf")
    reference = torch_clusters(kernel, table, valid)
    assert_same_clusters(native_clusters(kernel, table, valid), reference)
    assert reference.num_clusters < tokens  # real clusters, not singletons


def same_cluster_relation(ids):
    """(R, N, N) bool: whether two tokens of a row share a cluster (independent of how clusters are numbered)."""
    return ids[:, :, None] == ids[:, None, :]


@pytest.mark.parametrize("bucket_width", [0.5, 4.0, 16.0])
def test_native_grouping_gives_the_torch_partition_on_random_tokens(bucket_width):
    # real-sized rows of random tokens: the projection sums in another order than BLAS, so a code within
    # float32 rounding of a bucket edge could differ; on these seeds none does
    generator = torch.Generator().manual_seed(11)
    x = hf_layout(torch.randn(1, 4, 1500, 32, generator=generator) * 3)
    kernel = ACTKernel(32, rounds=32, bucket_width=bucket_width, seed=3)
    table = TokenTable.of(x)
    native, reference = native_clusters(kernel, table), torch_clusters(kernel, table)
    assert torch.equal(native.counts_per_row, reference.counts_per_row)
    assert torch.equal(same_cluster_relation(native.ids), same_cluster_relation(reference.ids))


@pytest.mark.parametrize("dim", [32, 64, 24], ids=["dim32-registers", "dim64-registers", "dim24-any"])
@pytest.mark.parametrize("layout", ["contiguous", "hf"])
def test_native_means_and_gather_index_equal_the_cluster_layout_bit_for_bit(dim, layout):
    generator = torch.Generator().manual_seed(dim)
    centres = 4 * torch.randn(2, 3, 30, dim, generator=generator)
    x = torch.gather(centres, 2, torch.randint(0, 30, (2, 3, 257, 1), generator=generator).expand(-1, -1, -1, dim))
    x = x + 1e-3 * torch.randn(x.shape, generator=generator)  # members differ, so means are real sums
    x = hf_layout(x) if layout == "hf" else x
    kernel = ACTKernel(dim, rounds=8, bucket_width=4.0, seed=1)
    table = TokenTable.of(x)
    clusters = torch_clusters(kernel, table)
    assert clusters.num_clusters < 60
    means, gather_index = native_act.cluster_means_natively(table.vectors, table.batch, table.heads, table.tokens,
                                                           table.heads_last, clusters)
    layout_reference = ClusterLayout.build(clusters.ids, clusters.num_clusters, clusters.members)
    assert torch.equal(means, layout_reference.means(table))
    assert torch.equal(gather_index, layout_reference.gather_index(table))


def test_codes_too_large_for_exact_sums_are_left_to_torch():
    x = torch.randn(1, 2, 50, 16, generator=torch.Generator().manual_seed(2)) * 1e9
    kernel = ACTKernel(16, rounds=32, bucket_width=1.0)
    table = TokenTable.of(x)
    assert native_clusters(kernel, table) is None
    assert_same_clusters(kernel.clusters_of(x), torch_clusters(kernel, table))


def test_unsupported_shapes_are_left_to_torch():
    x = torch.randn(1, 1, 20, 8)
    table = TokenTable.of(x)
    many_rounds = ACTKernel(8, rounds=native_act.MAX_ROUNDS + 1, bucket_width=1.0)
    assert native_clusters(many_rounds, table) is None
    assert many_rounds.clusters_of(x).ids.shape == (1, 20)


def test_flop_counting_runs_the_torch_path_so_counts_do_not_depend_on_a_compiler():
    x = torch.randn(1, 2, 30, 16)
    kernel = ACTKernel(16, rounds=8, bucket_width=1.0)
    table = TokenTable.of(x)
    with FlopCounterMode(display=False) as counter:
        assert native_clusters(kernel, table) is None
        kernel(x, x, x, None, None)
    projection_flops = 2 * 60 * 16 * 8
    assert counter.get_total_flops() > projection_flops  # the hash projection and the key fold were seen


def test_gradients_take_the_torch_means_and_reach_the_queries():
    query = torch.randn(1, 2, 40, 16, requires_grad=True)
    kernel = ACTKernel(16, rounds=8, bucket_width=4.0)
    table = TokenTable.of(query)
    clusters = kernel.clusters_of(query)
    assert native_act.cluster_means_natively(table.vectors, 1, 2, 40, False, clusters) is None
    with torch.no_grad():
        assert native_act.cluster_means_natively(table.vectors, 1, 2, 40, False, clusters) is not None
    kernel(query, query.detach(), query.detach(), None, None).sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0


def test_a_build_without_openmp_gives_the_same_clusters(tmp_path, monkeypatch):
    # what compilers without OpenMP (e.g. Apple clang) build: the same code, one thread
    monkeypatch.setattr(native_build, "FLAG_SETS", native_build.FLAG_SETS[1:])
    assert "-fopenmp" not in native_build.FLAG_SETS[0]
    library = native_build.build_library("act_grouping", native_build.find_compiler(), tmp_path)
    serial = ctypes.CDLL(str(library)).act_group_tokens
    serial.argtypes, serial.restype = native_act._kernel().argtypes, ctypes.c_int
    x = hf_layout(torch.randn(2, 3, 500, 32, generator=torch.Generator().manual_seed(8)))
    kernel = ACTKernel(32, rounds=16, bucket_width=8.0, seed=2)
    table = TokenTable.of(x)
    with_openmp = native_clusters(kernel, table)
    monkeypatch.setattr(native_act, "_kernel", lambda: serial)
    assert_same_clusters(native_clusters(kernel, table), with_openmp)


def test_off_switch_disables_the_native_kernels(monkeypatch):
    monkeypatch.setenv("COMPRESSOR_NATIVE", "0")
    assert native_build.native_library("act_grouping") is None


def test_build_is_cached_and_leaves_no_partial_files(tmp_path):
    compiler = native_build.find_compiler()
    assert compiler is not None
    first = native_build.build_library("act_grouping", compiler, tmp_path)
    assert first is not None and first.exists()
    modified = first.stat().st_mtime_ns
    again = native_build.build_library("act_grouping", compiler, tmp_path)
    assert again == first and again.stat().st_mtime_ns == modified  # found, not rebuilt
    assert [path.name for path in tmp_path.iterdir()] == [first.name]


@pytest.mark.parametrize("compiler", ["false", "/nonexistent/c++"], ids=["fails", "missing"])
def test_a_failed_build_warns_once_and_returns_none(tmp_path, caplog, compiler):
    with caplog.at_level(logging.WARNING, logger=native_build.__name__):
        assert native_build.build_library("act_grouping", compiler, tmp_path) is None
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "torch implementation" in warnings[0].getMessage()
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cache_warns_once_and_returns_none(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger=native_build.__name__):
        assert native_build.build_library("act_grouping", native_build.find_compiler(), blocker / "native") is None
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not-a-directory" in warnings[0].getMessage()
