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
from compressor.pass_order import check_pass_order, check_shared_sites
from compressor.passes import PASSES, Pass, PassContext
from compressor.passes.targets import select_sites
from compressor.recipe import PassSpec, Recipe


@dataclass
class AppliedPass:
    """A pass as it was applied: its spec, the pass object, the sites and the plan it ran with."""

    spec: PassSpec
    rewriter: Pass
    sites: list
    plan: dict[str, dict[str, Any]]


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
    defaults = rewriter.default_sites(adapter, candidates)
    return select_sites(spec.name, adapter.family, candidates, defaults, spec.params["targets"],
                        spec.params["ignore"])


def check_recipe_fits(loaded: LoadedModel, recipe: Recipe) -> None:
    """Every pass finds its sites, no two passes replace the same thing at one site, and no pass follows one it
    cannot (before anything slow)."""
    check_pass_order(recipe)
    claimed: dict[tuple[str, str], PassSpec] = {}
    chosen: list[tuple[PassSpec, Pass, list]] = []
    for spec in recipe.passes():
        rewriter = PASSES[spec.name]()
        sites = sites_for(rewriter, spec, loaded)
        chosen.append((spec, rewriter, sites))
        for site in sites:
            if rewriter.replaces is None:
                continue
            earlier = claimed.setdefault((site.name, rewriter.replaces), spec)
            if earlier is not spec:
                raise RecipeError(f"passes conflict: {earlier.stage}.{earlier.name} and {spec.stage}.{spec.name} "
                                  f"both replace the {rewriter.replaces.replace('_', ' ')} of {site.name}; "
                                  "use targets/ignore so that each site is rewritten by one of them")
    check_shared_sites(loaded.adapter, chosen)


def check_calibration_given(recipe: Recipe, calib: Any) -> None:
    """Refuse, before a model is loaded, a recipe with a pass still to plan that needs calibration data when
    `calib` is None (a recipe whose plans are filled in, e.g. a saved one, needs none)."""
    if calib is not None:
        return
    for spec in recipe.passes():
        message = PASSES[spec.name]().calibration_needed(spec.params) if spec.plan is None else None
        if message is not None:
            raise RecipeError(message)


def apply_recipe(loaded: LoadedModel, recipe: Recipe, seed: int, context: PassContext | None = None,
                 progress: bool = True, after_each: Callable[[AppliedPass], None] | None = None,
                 ) -> tuple[Recipe, list[AppliedPass]]:
    """Run every pass of `recipe` on `loaded.model` in place; returns the recipe with every plan filled in.

    Without a context (reload), each spec must carry its plan, and only the deterministic rewrite runs.
    `after_each` sees the model right after each pass (to measure what that pass saved).
    """
    check_recipe_fits(loaded, recipe)
    applied = []
    for spec in recipe.passes():
        rewriter = PASSES[spec.name]()
        sites = sites_for(rewriter, spec, loaded)
        plan = spec.plan
        planned = plan is None
        if planned:
            log(f"{spec.name}: planning {len(sites)} sites", progress)
            plan = rewriter.plan(loaded.adapter, sites, spec.params, context or PassContext(seed=seed))
        rewriter.rewrite(loaded.adapter, sites, spec.params, plan, seed)
        if planned:
            rewriter.initialise(loaded.adapter, sites, spec.params, plan, context or PassContext(seed=seed))
        applied.append(AppliedPass(spec, rewriter, sites, plan))
        if after_each is not None:
            after_each(applied[-1])
    return recipe.with_plans([item.plan for item in applied]), applied
