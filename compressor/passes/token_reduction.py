"""What `token_merge` and `token_clip` share: they rewrite the same blocks, through the adapter's token-reducing
forward, with a per-block schedule, and report the tokens each layer really runs on.

A subclass says what one block does (`step`) and what the plan records per block (`plan_entry`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from compressor.models.base import BlockSite, ModelAdapter
from compressor.ops.token_reduction import ClipStep, MergeStep, ScheduledTokenReducer
from compressor.ops.window_tokens import WindowTokenReducer
from compressor.passes.base import Pass, PassContext

#: why token_merge and token_clip exclude each other, in either order
ONE_REDUCER = ("both drive the model's one token reducer, so they cannot run on the same model; keep one of the two "
               "passes")


class TokenReductionPass(Pass):
    site_kind = "block"

    #: "merge" or "clip": families name the methods their blocks support (`ModelAdapter.token_reduction_methods`)
    method: str

    def candidate_sites(self, adapter: ModelAdapter) -> list[BlockSite]:
        """The blocks the adapter can reduce with this method (none otherwise: `auto` then says so)."""
        return adapter.token_reduction_blocks() if self.method in adapter.token_reduction_methods else []

    @abstractmethod
    def plan_entry(self, adapter: ModelAdapter, site: BlockSite, params: dict[str, Any]) -> dict[str, Any]:
        """The plan of one targeted block (plain YAML data)."""

    @abstractmethod
    def step(self, entry: dict[str, Any], params: dict[str, Any]) -> MergeStep | ClipStep:
        """What a targeted block does, from its plan entry."""

    def importance(self, adapter: ModelAdapter, params: dict[str, Any]) -> str:
        """How tokens are ranked where a step needs importance (clipping)."""
        return "mean"

    def plan(self, adapter: ModelAdapter, sites: list[BlockSite], params: dict[str, Any],
             context: PassContext) -> dict[str, dict[str, Any]]:
        return {site.name: self.plan_entry(adapter, site, params) for site in sites}

    def rewrite(self, adapter: ModelAdapter, sites: list[BlockSite], params: dict[str, Any],
                plan: dict[str, dict[str, Any]], seed: int) -> None:
        steps = [self.step(plan[block.name], params) if block.name in plan else None
                 for block in adapter.token_reduction_blocks()]
        layout = adapter.token_layout()
        if layout.window is not None:  # windowed attention: the same number of tokens kept in every window
            reducer = WindowTokenReducer(steps)
        else:
            reducer = ScheduledTokenReducer(steps, len(layout.prefix_tokens),
                                            importance=self.importance(adapter, params),
                                            proportional_attention=params.get("proportional_attention", True),
                                            keep_all_tokens=adapter.output_needs_all_tokens())
        adapter.install_token_reducer(reducer)

    def statistics(self, adapter: ModelAdapter, sites: list[BlockSite]) -> dict[str, Any]:
        reducer = adapter.token_reducer()
        tokens = list(getattr(reducer, "last_tokens", []))
        if not tokens:
            return {}
        blocks = adapter.token_reduction_blocks()
        return {
            "tokens_in": tokens[0],
            "tokens_after_block": {block.name: count for block, count in zip(blocks, tokens[1:])},
            "summary": {"tokens per layer": f"{tokens[0]} in; after each block: "
                                            + " ".join(str(t) for t in tokens[1:]),
                        "mean tokens/N": round(sum(reducer.last_fractions) / len(reducer.last_fractions), 4)},
        }
