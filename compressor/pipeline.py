"""`compress`: source → model → passes (driven by the recipe) → measured report.

Data flows one way. The original model is kept (a deep copy) until the end so that FLOPs, latency and fidelity are
measured against it in the same process, on the same example input.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from compressor.evaluate.cost import count_flops, count_parameters, interleaved_latency_ms
from compressor.evaluate.fidelity import mean_cosine, primary_outputs
from compressor.library_progress import library_progress_bars
from compressor.loaders.loaded_model import LoadedModel
from compressor.passes import PassContext
from compressor.recipe import Recipe
from compressor.report import attribute_costs, environment
from compressor.recipe_runner import AppliedPass, apply_recipe, check_calibration_given, check_recipe_fits, log
from compressor.sources import load_source


@dataclass
class CompressionResult:
    """The compressed model in memory, the resolved recipe that rebuilds it, and the measured report."""

    loaded: LoadedModel
    recipe: Recipe
    report: dict[str, Any]
    seed: int
    applied: list[AppliedPass] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model


def resolve_recipe(recipe: str | os.PathLike | Recipe, overrides: Sequence[str] = ()) -> Recipe:
    loaded = recipe if isinstance(recipe, Recipe) else Recipe.load(str(recipe))
    return loaded.with_overrides(list(overrides)) if overrides else loaded


def first_example(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The first example of the first batch: a real input to measure cost on, when calibration data exists."""
    return {key: value[:1] if isinstance(value, torch.Tensor) and value.dim() > 0 else value
            for key, value in batches[0].items()}


def _pass_statistics(applied: list[AppliedPass], loaded: LoadedModel, batches: list[dict]) -> list[dict]:
    with torch.no_grad():
        for item in applied:
            item.rewriter.reset_statistics(loaded.adapter, item.sites)
        for batch in batches:
            loaded.model(**batch)
    entries = []
    for item in applied:
        stats = item.rewriter.statistics(loaded.adapter, item.sites)
        entries.append({"name": item.spec.name, "stage": item.spec.stage, "sites": [s.name for s in item.sites],
                        "summary": stats.pop("summary", {}), "statistics": stats})
    return entries


def compress(source: Any, recipe: str | os.PathLike | Recipe, *, overrides: Sequence[str] = (),
             calib: str | None = None, calib_samples: int = 64, seed: int = 0,
             input_size: tuple[int, ...] | None = None, latency_runs: int = 5, progress: bool = True,
             revision: str | None = None, token: str | bool | None = None,
             trust_remote_code: bool = False) -> CompressionResult:
    """Load `source`, apply `recipe`, and measure params, FLOPs, latency and fidelity before and after."""
    recipe = resolve_recipe(recipe, overrides)
    check_calibration_given(recipe, calib)
    log(f"loading {source}", progress)
    with library_progress_bars(progress):
        loaded = load_source(source, revision=revision, token=token, trust_remote_code=trust_remote_code)
    adapter, model = loaded.adapter, loaded.model
    torch.manual_seed(seed)
    check_recipe_fits(loaded, recipe)  # before anything slow happens

    calibration = None
    if calib is not None:
        from compressor.data.calibration import load_calibration

        with library_progress_bars(progress):
            calibration = load_calibration(calib, adapter, limit=calib_samples, seed=seed, progress=progress)
    example = first_example(calibration) if calibration and input_size is None else \
        adapter.example_inputs(batch_size=1, size=input_size, seed=seed)
    original = copy.deepcopy(model)
    log(f"measuring the original {adapter.display_name} on {adapter.describe_input(example)}", progress)
    params_before = count_parameters(model)
    flops_before = count_flops(model, example)
    reference = primary_outputs(model, adapter, [example])
    calibration_reference = primary_outputs(model, adapter, calibration) if calibration else None

    context = PassContext(seed=seed, calibration=calibration, progress=progress, calibration_source=calib)
    costs = [(params_before, flops_before)]  # after each pass, on the same example: savings per pass add up
    resolved, applied = apply_recipe(loaded, recipe, seed, context, progress, after_each=lambda _: costs.append(
        (count_parameters(model), count_flops(model, example))))

    log("measuring the compressed model", progress)
    params_after, flops_after = costs[-1]
    fidelity = {"example_cosine": mean_cosine(reference, primary_outputs(model, adapter, [example]))}
    if calibration:
        fidelity["calibration_cosine"] = mean_cosine(calibration_reference,
                                                     primary_outputs(model, adapter, calibration))
    statistics_batches = calibration or [example]
    passes = attribute_costs(_pass_statistics(applied, loaded, statistics_batches), costs)
    latency_before, latency_after = interleaved_latency_ms([original, model], example, runs=latency_runs)
    del original

    report = {
        "source": str(source),
        "base_model": loaded.base_model,
        "family": adapter.family,
        "task": adapter.task,
        "recipe": recipe.source,
        "seed": seed,
        "input": adapter.describe_input(example) + (" (first calibration example)" if calibration and
                                                     input_size is None else " (synthetic example)"),
        "calibration": {"data": calib, "examples": sum(len(next(iter(b.values()))) for b in calibration)}
        if calibration else None,
        "params": {"before": params_before, "after": params_after},
        "flops": {"before": flops_before, "after": flops_after},
        "latency_ms": {"before": latency_before, "after": latency_after, "runs": latency_runs},
        "fidelity": fidelity,
        "passes": passes,
        "statistics_measured_on": "calibration data" if calibration else "example input",
        "environment": environment(),
    }
    return CompressionResult(loaded, resolved, report, seed, applied)
