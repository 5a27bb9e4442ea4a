"""Where a model's cost is: parameters and executed FLOPs per top-level part, from one counted forward.

The parts come from the family adapter (`ModelAdapter.cost_parts`: backbone / encoder / decoder / heads for a
detector, embeddings / blocks / head for a transformer, stem / stages / head for a ResNet). torch's counter credits
each FLOP to every module running at the time, keyed by the module's path, so a part's FLOPs are those of its
outermost counted modules (a nested module is already inside its parent's count). An ACT kernel's
`uncounted_flops` go to the part holding the kernel. What no part holds (work done by the root's own forward,
parameters of the root) is the part "other", listed only when it is not empty. The parts sum exactly to the
totals `count_parameters` and `count_flops` give.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor.evaluate.cost import counted_forward
from compressor.models.base import ModelAdapter

#: the part of what no part of the adapter holds
OTHER = "other"


@dataclass(frozen=True)
class Cost:
    """Totals and, in the adapter's order, `parts`: part -> {"params": n, "flops": n}, summing to the totals."""

    params: int
    flops: int
    parts: dict[str, dict[str, int]]


class _PartLookup:
    """The part a qualified module or parameter name belongs to (its longest prefix that is a part's prefix)."""

    def __init__(self, parts: list[tuple[str, tuple[str, ...]]]):
        self.by_prefix = {prefix: part for part, prefixes in parts for prefix in prefixes}

    def __call__(self, name: str) -> str | None:
        path = name.split(".")
        for end in range(len(path), 0, -1):
            part = self.by_prefix.get(".".join(path[:end]))
            if part is not None:
                return part
        return None


def measure_cost(adapter: ModelAdapter, inputs: dict[str, torch.Tensor]) -> Cost:
    """Params and FLOPs of `adapter.model`, in total and per part, from one forward on `inputs`."""
    model = adapter.model
    part_of = _PartLookup(adapter.cost_parts())
    table = {part: {"params": 0, "flops": 0} for part in dict.fromkeys(part_of.by_prefix.values())}
    table[OTHER] = {"params": 0, "flops": 0}

    for name, parameter in model.named_parameters():  # a tied parameter is listed once
        table[part_of(name) or OTHER]["params"] += parameter.numel()

    counter = counted_forward(model, inputs)
    total = int(counter.get_total_flops())
    for name, flops in _outermost_in_parts(_flops_by_module(model, counter), part_of).items():
        table[part_of(name)]["flops"] += flops
    table[OTHER]["flops"] = total - sum(entry["flops"] for entry in table.values())
    if table[OTHER]["flops"] < 0:
        raise AssertionError(f"{adapter.display_name}: FLOPs counted in two parts; its cost_parts overlap")

    for name, module in model.named_modules():
        uncounted = int(getattr(module, "uncounted_flops", 0))
        if uncounted:
            table[part_of(name) or OTHER]["flops"] += uncounted
            total += uncounted
    if not any(table[OTHER].values()):
        del table[OTHER]
    return Cost(params=sum(entry["params"] for entry in table.values()), flops=total, parts=table)


def _flops_by_module(model: torch.nn.Module, counter) -> dict[str, int]:
    """Qualified module name -> FLOPs counted while it ran (torch keys modules as `RootClass.qualified.name`)."""
    root = type(model).__name__ + "."
    return {key[len(root):]: int(sum(ops.values())) for key, ops in counter.get_flop_counts().items()
            if key.startswith(root)}


def _outermost_in_parts(flops: dict[str, int], part_of: _PartLookup) -> dict[str, int]:
    """The counted modules inside a part none of whose ancestors inside a part was counted: each FLOP once."""
    def covered(name: str) -> bool:
        path = name.split(".")
        return any(".".join(path[:end]) in flops and part_of(".".join(path[:end])) is not None
                   for end in range(1, len(path)))

    return {name: count for name, count in flops.items() if part_of(name) is not None and not covered(name)}
