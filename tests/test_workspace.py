"""Scratch memory (compressor.ops.workspace): reused per thread and dtype, safe in and out of inference mode."""

from __future__ import annotations

import threading

import torch

from compressor.ops import ACTKernel
from compressor.ops.workspace import release_scratch, scratch

CPU = torch.device("cpu")


def test_scratch_reuses_its_buffer_and_grows_for_larger_requests():
    release_scratch()
    first = scratch((4, 8), torch.float32, CPU)
    again = scratch((2, 3), torch.float32, CPU)
    assert again.data_ptr() == first.data_ptr() and again.shape == (2, 3)
    larger = scratch((64, 64), torch.float32, CPU)
    assert larger.shape == (64, 64)
    assert scratch((4, 8), torch.float32, CPU).data_ptr() == larger.data_ptr()
    assert scratch((4, 8), torch.float64, CPU).data_ptr() != larger.data_ptr()  # one buffer per dtype


def test_scratch_is_per_thread():
    release_scratch()
    here = scratch((16,), torch.float32, CPU).data_ptr()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(scratch((16,), torch.float32, CPU).data_ptr()))
    worker.start()
    worker.join()
    assert seen and seen[0] != here


def test_kernel_works_with_and_without_inference_mode_on_the_same_scratch():
    release_scratch()
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(1, 2, 40, 16, generator=generator) for _ in range(3))
    kernel = ACTKernel(16, rounds=8, bucket_width=2.0)
    with torch.inference_mode():
        reference = kernel(query, key, value, None, None)  # scratch created here, then reused below
    query.requires_grad_()
    output = kernel(query, key, value, None, None)
    output.sum().backward()
    assert torch.equal(output.detach(), reference)
    assert query.grad is not None and query.grad.abs().sum() > 0


def test_scratch_of_different_purposes_never_shares_memory():
    release_scratch()
    queries = scratch((64,), torch.int64, CPU, "query_clusters")
    keys = scratch((64,), torch.int64, CPU, "key_clusters")
    assert queries.data_ptr() != keys.data_ptr()
    assert scratch((32,), torch.int64, CPU, "query_clusters").data_ptr() == queries.data_ptr()


def test_kernel_clustering_both_sides_keeps_each_sides_clusters_apart():
    # queries and keys are clustered before either is used: with one shared buffer the keys' ids would
    # overwrite the queries'
    release_scratch()
    generator = torch.Generator().manual_seed(4)
    query, key, value = (torch.randn(1, 2, 60, 16, generator=generator) for _ in range(3))
    kernel = ACTKernel(16, rounds=8, bucket_width=1e-4, cluster="both")  # singletons: exact attention
    with torch.inference_mode():
        output = kernel(query, key, value, None, None)
    assert (output - torch.nn.functional.scaled_dot_product_attention(query, key, value)).abs().max() <= 1e-5
