"""Apply a recipe's passes to a loaded model: the sites each pass selects, the checks made before anything slow,
then plan and rewrite, pass after pass.

This is what both `compress` (plan, then rewrite) and reloading a compressed output (replay the saved plans) run;
it knows nothing of where a model came from or where it goes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from compressor.errors import RecipeError
from compressor.loaders.loaded_model import LoadedModel
from compressor.models.base import ModelAdapter
from compressor.pass_order import check_pass_order, check_shared_sites
from compressor.passes import Pass, PassContext
from compressor.passes.targets import select_sites
from compressor.recipe import PassSpec, Recipe


@dataclass
class PassStep:
    """One step of a recipe on one model: its spec, its pass object (built once, here), the sites it chose and,
    once planned (or read from the recipe), its plan."""

    spec: PassSpec
    rewriter: Pass
    sites: list
    plan: dict[str, dict[str, Any]] | None = None


def log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


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
    defaults = rewriter.default_sites(adapter, [site for site in candidates if adapter.in_auto_scope(site.name)])
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
