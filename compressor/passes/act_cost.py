"""Where ACT pays: a layer is left exact where clustering would cost more FLOPs than exact attention.

ACT's cost per layer is the hashing and grouping of every token (linear in N, growing with the rounds L) plus
attention for the C prototypes only (C·N); exact attention costs N². On short sequences the first term can exceed
all the attention it saves. Both are measured with the project's FLOP accounting (torch's FlopCounterMode with the
CPU attention kernel, plus the work the kernel reports as `uncounted_flops`), per kernel, on real forwards:

1. At any prototype count: every token of a row in one cluster (C = 1, a bucket width no vector spans) is ACT's
   cheapest case. When even that costs at least exact attention at this sequence length, ACT can never pay here.
2. At the planned widths, on the data the plan sees (calibration data when given, else the example input the
   report measures on): where the clusters the data forms (C adapts per input) make ACT cost at least exact
   attention, the layer is left exact.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.evaluate.cost import flop_counter
from compressor.models.base import ModelAdapter

#: a bucket width no token vector spans: every token of a row hashes to one cluster (ACT's cheapest case)
ONE_CLUSTER_WIDTH = 1e9


def configure_kernels(kernels: list, widths: list[float | None]) -> None:
    """Give each kernel its bucket width (None: exact attention) and fresh statistics."""
    for kernel, width in zip(kernels, widths):
        kernel.enabled = width is not None
        if width is not None:
            kernel.set_bucket_width(width)
        kernel.reset_statistics()


@torch.no_grad()
def kernel_flops(adapter: ModelAdapter, kernels: list, batches: list[dict[str, torch.Tensor]]) -> list[int]:
    """FLOPs each kernel executed over forwards on `batches` (counted inside the kernel, plus what it reports)."""
    totals = [0] * len(kernels)
    counter = flop_counter()
    starts: dict[int, int] = {}
    handles = []
    for index, kernel in enumerate(kernels):
        handles.append(kernel.register_forward_pre_hook(
            lambda _m, _a, i=index: starts.__setitem__(i, counter.get_total_flops())))
        handles.append(kernel.register_forward_hook(
            lambda m, _a, _o, i=index: totals.__setitem__(
                i, totals[i] + counter.get_total_flops() - starts[i] + int(m.uncounted_flops))))
    try:
        with counter:
            for batch in batches:
                adapter.model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return totals


def sites_left_exact(adapter: ModelAdapter, names: list[str], kernels: list, widths: list[float | None],
                     batches: list[dict[str, torch.Tensor]], data: str) -> dict[str, str]:
    """Per site where ACT does not pay, why (one line); `kernels` are installed on `adapter`'s (scratch) model."""
    configure_kernels(kernels, [None] * len(kernels))
    exact = kernel_flops(adapter, kernels, batches)
    configure_kernels(kernels, [ONE_CLUSTER_WIDTH] * len(kernels))
    cheapest = kernel_flops(adapter, kernels, batches)
    reasons: dict[str, str] = {}
    for name, kernel, width, best, full in zip(names, kernels, widths, cheapest, exact):
        if width is not None and best >= full:
            reasons[name] = (f"ACT cannot pay at this sequence length: even one prototype per row costs "
                             f"{best / full:.2f}× exact attention ({kernel.rounds} rounds of hashing per token)")
    planned = [None if name in reasons else width for name, width in zip(names, widths)]
    configure_kernels(kernels, planned)
    clustered = kernel_flops(adapter, kernels, batches)
    for name, kernel, width, cost, full in zip(names, kernels, planned, clustered, exact):
        if width is not None and cost >= full:
            reasons[name] = (f"on {data}, bucket width {width:g} left {kernel.prototype_fraction():.2f} "
                             f"prototypes per token, costing {cost / full:.2f}× exact attention")
    return reasons


def describe_left_exact(reasons: dict[str, str], sites: int) -> dict[str, Any]:
    """Report summary lines: how many sites were left exact, and a warning when every one was."""
    if not reasons:
        return {}
    summary: dict[str, Any] = {"left exact": f"{len(reasons)} of {sites} (statistics.left_exact says why)"}
    if len(reasons) == sites:
        summary["warning"] = (f"act changed nothing: every site is left exact ({next(iter(reasons.values()))}); "
                              "fewer rounds, wider buckets or longer inputs let ACT pay "
                              "(act.only_where_it_pays=false clusters anyway)")
    return summary
