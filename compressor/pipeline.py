"""`compress`: source → model → passes (driven by the recipe) → measured report.

Data flows one way. The original model is kept (a deep copy) until the end so that FLOPs, latency and fidelity are
measured against it in the same process, on the same example input.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from compressor.checked_numbers import check_seed
from compressor.errors import CompressorError
from compressor.evaluate.cost import interleaved_latency_ms
from compressor.evaluate.cost_parts import measure_cost
from compressor.evaluate.before_after import check_eval_data, load_eval_data, metric_before_after
from compressor.evaluate.fidelity import fidelity_outputs, mean_cosine, mean_fidelity, primary_outputs
from compressor.library_progress import library_progress_bars
from compressor.loaders.loaded_model import LoadedModel
from compressor.passes import PassContext
from compressor.recipe import Recipe
from compressor.recipe_runner import PassStep, apply_recipe, check_calibration_given, fit_recipe, log
from compressor.report import attribute_costs, cost_by_part, environment
from compressor.sources import load_source


@dataclass
class CompressionResult:
    """The compressed model in memory, the resolved recipe that rebuilds it, and the measured report."""

    loaded: LoadedModel
    recipe: Recipe
    report: dict[str, Any]
    seed: int
    applied: list[PassStep] = field(default_factory=list)
    #: the model as loaded, before the passes: kept only when the recipe ends with a distill step, whose teacher
    #: it is (so the source is not loaded twice)
    original: nn.Module | None = None

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


def _pass_statistics(applied: list[PassStep], loaded: LoadedModel, batches: list[dict]) -> list[dict]:
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


def _load_evaluation_data(eval_data: str | None, eval_limit: int | None, progress: bool):
    if eval_data is None:
        return None
    if eval_limit is not None and eval_limit < 1:
        raise CompressorError(f"eval_limit must be at least 1, got {eval_limit}")
    with library_progress_bars(progress):
        return load_eval_data(eval_data, eval_limit, progress=progress)


def compress(source: Any, recipe: str | os.PathLike | Recipe, *, overrides: Sequence[str] = (),
             calib: str | None = None, calib_samples: int = 64, seed: int = 0,
             input_size: tuple[int, ...] | None = None, latency_runs: int = 5, progress: bool = True,
             revision: str | None = None, token: str | bool | None = None,
             trust_remote_code: bool = False, eval_data: str | None = None,
             eval_limit: int | None = None) -> CompressionResult:
    """Load `source`, apply `recipe`, and measure params, FLOPs, latency and fidelity before and after; with
    `eval_data` (labelled data, `eval_limit` examples of it) also the task metric of both models."""
    check_seed(seed, "seed")
    recipe = resolve_recipe(recipe, overrides)
    check_calibration_given(recipe, calib)
    evaluation_data = _load_evaluation_data(eval_data, eval_limit, progress)
    log(f"loading {source}", progress)
    with library_progress_bars(progress):
        loaded = load_source(source, revision=revision, token=token, trust_remote_code=trust_remote_code)
    adapter, model = loaded.adapter, loaded.model
    torch.manual_seed(seed)
    steps = fit_recipe(loaded, recipe)  # once, before anything slow happens
    if evaluation_data is not None:
        check_eval_data(loaded, evaluation_data)

    calibration = None
    if calib is not None:
        from compressor.data.calibration import load_calibration

        with library_progress_bars(progress):
            calibration = load_calibration(calib, adapter, limit=calib_samples, seed=seed, progress=progress)
    example = first_example(calibration) if calibration and input_size is None else \
        adapter.example_inputs(batch_size=1, size=input_size, seed=seed)
    original = copy.deepcopy(model)
    log(f"measuring the original {adapter.display_name} on {adapter.describe_input(example)}", progress)
    costs = [measure_cost(adapter, example)]  # and after each pass, on the same example: savings per pass add up
    params_before, flops_before = costs[0].params, costs[0].flops
    reference = primary_outputs(model, adapter, [example])
    calibration_reference = fidelity_outputs(model, adapter, calibration) if calibration else None

    context = PassContext(seed=seed, calibration=calibration, progress=progress, calibration_source=calib,
                          example=example)
    resolved, applied = apply_recipe(loaded, recipe, seed, context, progress, after_each=lambda _: costs.append(
        measure_cost(loaded.adapter, example)), steps=steps)

    log("measuring the compressed model", progress)
    params_after, flops_after = costs[-1].params, costs[-1].flops
    fidelity = {"example_cosine": mean_cosine(reference, primary_outputs(model, adapter, [example]))}
    if calibration:
        compressed = fidelity_outputs(model, adapter, calibration)
        fidelity["calibration_cosine"] = mean_cosine([r.primary for r in calibration_reference],
                                                     [c.primary for c in compressed])
        if calibration_reference[0].queries is not None:  # what a detector's calibration targets
            fidelity["calibration_detection_agreement"] = mean_fidelity(calibration_reference, compressed,
                                                                        adapter.query_class_activation)
    statistics_batches = calibration or [example]
    passes = attribute_costs(_pass_statistics(applied, loaded, statistics_batches),
                             [(cost.params, cost.flops) for cost in costs])
    latency_before, latency_after = interleaved_latency_ms([original, model], example, runs=latency_runs)
    kept = original if resolved.distill() is not None else None
    metrics = None
    if evaluation_data is not None:
        log(f"evaluating the original and the compressed model on {evaluation_data.spec}", progress)
        original_loaded = dataclasses.replace(loaded, model=original, adapter=type(adapter)(original,
                                                                                            adapter.processor))
        metrics = metric_before_after(original_loaded, loaded, evaluation_data, progress=progress)
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
        "parts": cost_by_part(costs[0].parts, costs[-1].parts),
        "latency_ms": {"before": latency_before, "after": latency_after, "runs": latency_runs},
        "fidelity": fidelity,
        "passes": passes,
        "statistics_measured_on": "calibration data" if calibration else "example input",
        "environment": environment(),
    }
    if metrics is not None:
        report["metrics"] = metrics.pop("metrics")
        report["metrics_measured_on"] = metrics
        if resolved.distill() is not None:  # the distill step's own summary gives the trained model's metric
            metrics["after"] = "the passes, before the distill step"
    return CompressionResult(loaded, resolved, report, seed, applied, original=kept)
