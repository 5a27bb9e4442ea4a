"""What a model costs: parameters, FLOPs actually executed, latency.

FLOPs are counted by running the model under torch's FlopCounterMode, so they are the work really done on the
example input (a pass that only zeroes tokens saves nothing here). Kernels that do work the counter cannot see
(sorting, scatter, gather in ACT) report it in `uncounted_flops`, which is added.
"""

from __future__ import annotations

import statistics
import time
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied parameter counts once)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return int(sum(seen.values()))


def _uncounted_flops(model: nn.Module) -> int:
    return int(sum(getattr(m, "uncounted_flops", 0) for m in model.modules()))


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: torch's counter knows the CUDA attention kernels but not the CPU one SDPA dispatches to here; without this,
#: every model's attention would count as free
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


@torch.no_grad()
def counted_forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> FlopCounterMode:
    """The counter after one forward on `inputs`: totals, and per module (`get_flop_counts`)."""
    counter = flop_counter()
    with counter:
        model(**inputs)
    return counter


def count_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward on `inputs` (multiply-add = 2 FLOPs, torch's convention)."""
    return int(counted_forward(model, inputs).get_total_flops()) + _uncounted_flops(model)


@torch.no_grad()
def interleaved_latency_ms(models: list[nn.Module], inputs: dict[str, torch.Tensor], runs: int = 5,
                           warmup: int = 1) -> list[float]:
    """Median wall-clock milliseconds of one forward of each model, runs interleaved.

    Alternating the models run by run exposes them to the same machine drift, so their ratio is fair.
    """
    for model in models:
        for _ in range(warmup):
            model(**inputs)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for model, record in zip(models, times):
            start = time.perf_counter()
            model(**inputs)
            record.append((time.perf_counter() - start) * 1000.0)
    return [float(statistics.median(record)) for record in times]
