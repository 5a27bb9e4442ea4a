"""Choose ACT's bucket width per layer on calibration data (beyond the paper, which fixed r = 8 everywhere).

Layers differ: some tolerate coarse clusters, others do not. We measure, for every layer alone and every candidate
width, the prototype fraction it gives and the output fidelity it keeps (`compressor.evaluate.fidelity.mean_fidelity`:
the mean cosine of the model's primary output to the original's, or for set-prediction detectors the agreement of
their detections). A Lagrangian sweep over "cost + λ · loss" turns those per-layer curves into a short path of
allocations from cheap to faithful; uniform widths are added as candidates, so calibration can never do worse than
the best single width on the calibration data. The cheapest candidate whose *joint* fidelity (all layers on
together, measured) reaches the target wins; a layer may be left exact when that is what the target requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from compressor.evaluate.fidelity import FidelityOutputs, fidelity_outputs, mean_fidelity
from compressor.models.base import ModelAdapter
from compressor.passes.act_cost import configure_kernels
from compressor.passes.base import PassContext

#: a layer left exact: every token is its own prototype, and nothing is lost
EXACT = None  # as `configure_kernels` reads a width


@dataclass
class Measurement:
    prototype_fraction: float
    fidelity: float


def _measure(adapter: ModelAdapter, kernels: list, widths: list[float | None], batches: list[dict],
             reference: list[FidelityOutputs]) -> tuple[list[float], float]:
    """Per-layer prototype fractions and the fidelity to `reference` with `widths` applied."""
    configure_kernels(kernels, widths)
    fidelity = mean_fidelity(reference, fidelity_outputs(adapter.model, adapter, batches),
                             adapter.query_class_activation)
    fractions = [kernel.prototype_fraction() if width is not EXACT else 1.0
                 for kernel, width in zip(kernels, widths)]
    return fractions, fidelity


def _lagrangian_path(table: list[dict[Any, Measurement]]) -> list[list[float | None]]:
    """Allocations minimising Σ fraction + λ·Σ(1 − fidelity) for a sweep of λ, cheapest first."""
    path, seen = [], set()
    for lam in [0.0] + [10 ** (k / 4) for k in range(-8, 33)]:
        choice = tuple(min(options, key=lambda w: (options[w].prototype_fraction
                                                   + lam * (1.0 - options[w].fidelity),
                                                   -options[w].fidelity))
                       for options in table)
        if choice not in seen:
            seen.add(choice)
            path.append(list(choice))
    return path


def _estimated_cost(table: list[dict[Any, Measurement]], widths: list) -> float:
    return sum(options[w].prototype_fraction for options, w in zip(table, widths))


def calibrate_bucket_widths(adapter: ModelAdapter, kernels: list, params: dict[str, Any],
                            context: PassContext) -> list[float | None]:
    """Per-layer bucket widths (None = exact) meeting `params['fidelity_target']` at the least cost."""
    target = float(params["fidelity_target"])
    grid = sorted(float(w) for w in params["bucket_widths"])
    batches = context.calibration
    configure_kernels(kernels, [EXACT] * len(kernels))
    reference = fidelity_outputs(adapter.model, adapter, batches)

    table: list[dict[Any, Measurement]] = []
    progress = tqdm(total=len(kernels) * len(grid), desc="act: per-layer sweep", disable=not context.progress,
                    leave=False)
    for index in range(len(kernels)):
        options = {EXACT: Measurement(1.0, 1.0)}
        for width in grid:
            widths = [EXACT] * len(kernels)
            widths[index] = width
            fractions, fidelity = _measure(adapter, kernels, widths, batches, reference)
            options[width] = Measurement(fractions[index], fidelity)
            progress.update()
        table.append(options)
    progress.close()

    path = _lagrangian_path(table)
    uniform = [[width] * len(kernels) for width in grid]
    joint: dict[tuple, tuple[float, float]] = {}

    def evaluate(widths: list) -> tuple[float, float]:
        key = tuple(widths)
        if key not in joint:
            fractions, fidelity = _measure(adapter, kernels, widths, batches, reference)
            joint[key] = (sum(fractions), fidelity)
        return joint[key]

    def cheapest_meeting_target(candidates: list[list]) -> list | None:
        """Binary search along candidates ordered from cheap (less faithful) to faithful."""
        low, high, best = 0, len(candidates) - 1, None
        while low <= high:
            middle = (low + high) // 2
            if evaluate(candidates[middle])[1] >= target:
                best, high = candidates[middle], middle - 1
            else:
                low = middle + 1
        return best

    path.sort(key=lambda widths: _estimated_cost(table, widths))
    uniform.sort(key=lambda widths: -widths[0])  # wide buckets (cheap) first
    winners = [w for w in (cheapest_meeting_target(path), cheapest_meeting_target(uniform)) if w is not None]
    if not winners:
        chosen = [EXACT] * len(kernels)
    else:
        chosen = min(winners, key=lambda widths: evaluate(widths)[0])
    configure_kernels(kernels, chosen)
    return chosen
