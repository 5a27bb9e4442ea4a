"""`compress`: source → model → passes (driven by the recipe) → measured report.

Data flows one way. The original model is kept (a deep copy) until the end so that FLOPs, latency and fidelity are
measured against it in the same process, on the same example input.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from compressor.errors import CompressorError, RecipeError
from compressor.evaluate.cost import count_flops, count_parameters, interleaved_latency_ms
from compressor.evaluate.before_after import check_eval_data, load_eval_data, metric_before_after
from compressor.evaluate.fidelity import mean_cosine, primary_outputs
from compressor.library_progress import library_progress_bars
from compressor.models.base import ModelAdapter
from compressor.pass_order import check_pass_order, check_shared_sites
from compressor.passes import Pass, PassContext
from compressor.passes.targets import select_sites
from compressor.recipe import PassSpec, Recipe
from compressor.report import attribute_costs, environment
from compressor.sources import LoadedModel, load_source


@dataclass
class PassStep:
    """One step of a recipe on one model: its spec, its pass object (built once, here), the sites it chose and,
    once planned (or read from the recipe), its plan."""

    spec: PassSpec
    rewriter: Pass
    sites: list
    plan: dict[str, dict[str, Any]] | None = None


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


def log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def resolve_recipe(recipe: str | os.PathLike | Recipe, overrides: Sequence[str] = ()) -> Recipe:
    loaded = recipe if isinstance(recipe, Recipe) else Recipe.load(str(recipe))
    return loaded.with_overrides(list(overrides)) if overrides else loaded


def sites_for(rewriter: Pass, spec: PassSpec, loaded: LoadedModel) -> list:
    """The sites a pass spec selects in this model (the plan's sites when the spec carries a plan)."""
    adapter = loaded.adapter
    candidates = rewriter.candidate_sites(adapter)
    if spec.plan:
        by_name = {site.name: site for site in candidates}
        missing = [name for name in spec.plan if name not in by_name]
        if missing:
            raise RecipeError(f"{spec.name}.plan names {missing[0]!r}, which is not a {spec.name} site of this "
                              f"{adapter.family} model; the recipe was made for another architecture")
        return [by_name[name] for name in spec.plan]
    defaults = rewriter.default_sites(adapter, candidates)
    return select_sites(spec.name, adapter.family, candidates, defaults, spec.params["targets"],
                        spec.params["ignore"])


def fit_recipe(loaded: LoadedModel, recipe: Recipe) -> list[PassStep]:
    """The recipe's steps on this model, checked once before anything slow: every pass finds its sites and can
    apply its settings there, no two passes replace the same thing at one site, and no pass follows one it
    cannot."""
    check_pass_order(recipe)
    claimed: dict[tuple[str, str], PassSpec] = {}
    steps = []
    for spec in recipe.passes():
        rewriter = spec.pass_class()
        step = PassStep(spec, rewriter, sites_for(rewriter, spec, loaded), spec.plan)
        rewriter.check_settings(loaded.adapter, step.sites, spec.params)
        steps.append(step)
        for site in step.sites:
            if rewriter.replaces is None:
                continue
            earlier = claimed.setdefault((site.name, rewriter.replaces), spec)
            if earlier is not spec:
                raise RecipeError(f"passes conflict: {earlier.stage}.{earlier.name} and {spec.stage}.{spec.name} "
                                  f"both replace the {rewriter.replaces.replace('_', ' ')} of {site.name}; "
                                  "use targets/ignore so that each site is rewritten by one of them")
    check_shared_sites(loaded.adapter, [(step.spec, step.rewriter, step.sites) for step in steps])
    return steps


def check_calibration_given(recipe: Recipe, calib: Any) -> None:
    """Refuse, before a model is loaded, a recipe with a pass still to plan that needs calibration data when
    `calib` is None (a recipe whose plans are filled in, e.g. a saved one, needs none)."""
    if calib is not None:
        return
    for spec in recipe.passes():
        message = spec.pass_class.calibration_needed(spec.params) if spec.plan is None else None
        if message is not None:
            raise RecipeError(message)


def current_sites(step: PassStep, adapter: ModelAdapter) -> list:
    """The step's sites as the model describes them now: earlier passes may have changed them (prune shrinks the
    head size an act site records), never their names."""
    by_name = {site.name: site for site in step.rewriter.candidate_sites(adapter)}
    return [by_name[site.name] for site in step.sites]


def apply_recipe(loaded: LoadedModel, recipe: Recipe, seed: int, context: PassContext | None = None,
                 progress: bool = True, after_each: Callable[[PassStep], None] | None = None,
                 steps: list[PassStep] | None = None) -> tuple[Recipe, list[PassStep]]:
    """Run every pass of `recipe` on `loaded.model` in place; returns the recipe with every plan filled in.

    Without a context (reload), each spec must carry its plan, and only the deterministic rewrite runs. `steps`
    are the recipe's steps from `fit_recipe` when the caller checked the recipe already (it is checked once).
    Each pass first plans (deciding, the model unchanged), then rewrites, then initialises the new weights.
    `after_each` sees the model right after each pass (to measure what that pass saved).
    """
    if steps is None:
        steps = fit_recipe(loaded, recipe)
    for step in steps:
        step.sites = current_sites(step, loaded.adapter)
        planned = step.plan is None
        if planned:
            log(f"{step.spec.name}: planning {len(step.sites)} sites", progress)
            step.plan = step.rewriter.plan(loaded.adapter, step.sites, step.spec.params,
                                           context or PassContext(seed=seed))
        step.rewriter.rewrite(loaded.adapter, step.sites, step.spec.params, step.plan, seed)
        if planned:
            step.rewriter.initialise(loaded.adapter, step.sites, step.spec.params, step.plan,
                                     context or PassContext(seed=seed))
        if after_each is not None:
            after_each(step)
    return recipe.with_plans([step.plan for step in steps]), steps


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
        return load_eval_data(eval_data, eval_limit)


def compress(source: Any, recipe: str | os.PathLike | Recipe, *, overrides: Sequence[str] = (),
             calib: str | None = None, calib_samples: int = 64, seed: int = 0,
             input_size: tuple[int, ...] | None = None, latency_runs: int = 5, progress: bool = True,
             revision: str | None = None, token: str | bool | None = None,
             trust_remote_code: bool = False, eval_data: str | None = None,
             eval_limit: int | None = None) -> CompressionResult:
    """Load `source`, apply `recipe`, and measure params, FLOPs, latency and fidelity before and after; with
    `eval_data` (labelled data, `eval_limit` examples of it) also the task metric of both models."""
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
    params_before = count_parameters(model)
    flops_before = count_flops(model, example)
    reference = primary_outputs(model, adapter, [example])
    calibration_reference = primary_outputs(model, adapter, calibration) if calibration else None

    context = PassContext(seed=seed, calibration=calibration, progress=progress, calibration_source=calib,
                          example=example)
    costs = [(params_before, flops_before)]  # after each pass, on the same example: savings per pass add up
    resolved, applied = apply_recipe(loaded, recipe, seed, context, progress, after_each=lambda _: costs.append(
        (count_parameters(model), count_flops(model, example))), steps=steps)

    log("measuring the compressed model", progress)
    params_after, flops_after = costs[-1]
    fidelity = {"example_cosine": mean_cosine(reference, primary_outputs(model, adapter, [example]))}
    if calibration:
        fidelity["calibration_cosine"] = mean_cosine(calibration_reference,
                                                     primary_outputs(model, adapter, calibration))
    statistics_batches = calibration or [example]
    passes = attribute_costs(_pass_statistics(applied, loaded, statistics_batches), costs)
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
