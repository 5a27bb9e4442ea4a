"""Orders of passes that cannot work, rejected before anything runs, with the reason in one line.

Passes chain: each rewrites the model the previous ones left. Some orders break (pruning after ACT: the kernels keep
the unpruned head size) or do nothing (pruning after tying: the dependency graph cannot follow a borrowed weight);
each pass names the passes it cannot follow (`Pass.cannot_follow`), found by running every ordered pair on small
ViT, DETR and ResNet models (docs/benchmarks.md, "Composition"). Some pairs conflict only where their sites meet,
whatever the order (`Pass.conflict`).
"""

from __future__ import annotations

from compressor.errors import RecipeError
from compressor.models.base import ModelAdapter
from compressor.passes import Pass
from compressor.recipe import PassSpec, Recipe


def _where(spec: PassSpec) -> str:
    return f"{spec.stage}.{spec.name}" + (f" (line {spec.line})" if spec.line else "")


def check_pass_order(recipe: Recipe) -> None:
    """Raise RecipeError for the first pass that runs after one it cannot follow."""
    earlier: list[PassSpec] = []
    for spec in recipe.passes():
        for before in earlier:
            reason = spec.pass_class.cannot_follow.get(before.name)
            if reason is not None:
                raise RecipeError(f"{recipe.source}: passes in an order that cannot work: {_where(spec)} runs after "
                                  f"{_where(before)}: {reason}")
        earlier.append(spec)


def check_shared_sites(adapter: ModelAdapter, chosen: list[tuple[PassSpec, Pass, list]]) -> None:
    """Raise RecipeError when two passes cannot share the sites they chose, in either order (`Pass.conflict`),
    e.g. token_clip ranking by mean attention where act no longer forms the attention matrix."""
    for index, (spec, rewriter, sites) in enumerate(chosen):
        for earlier, other, other_sites in chosen[:index]:
            reason = (rewriter.conflict(adapter, sites, spec.params, other, other_sites)
                      or other.conflict(adapter, other_sites, earlier.params, rewriter, sites))
            if reason:
                raise RecipeError(f"passes conflict: {earlier.stage}.{earlier.name} and {spec.stage}.{spec.name}: "
                                  f"{reason}")
