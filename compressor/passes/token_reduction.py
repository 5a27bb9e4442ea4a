"""What `token_merge` and `token_clip` share: they rewrite the same blocks, through the adapter's token-reducing
forward, with a per-block schedule, and report the tokens each layer really runs on.

A subclass says what one block does (`step`), what the plan records per block (`plan_entry`) and which settings of
the stack's reducer are its own (`reducer_settings`). The two passes can share a model on different blocks (merge
early, clip later, or the reverse): the second one adds its steps to the reducer the first installed.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from compressor.models.base import BlockSite, ModelAdapter, TokenStack
from compressor.ops.token_reduction import ClipStep, MergeStep, ScheduledTokenReducer
from compressor.ops.window_tokens import WindowTokenReducer
from compressor.passes.base import Pass, PassContext


class TokenReductionPass(Pass):
    """Targets choose blocks from every token stack of the model (`ModelAdapter.token_stacks`: one for a
    standalone model; a Swin-backbone detector's backbone blocks and its encoder layers). Each stack that has a
    targeted block gets its own reducer, with its own schedule; a stack with no targeted block is left untouched.
    `auto` applies the pass's rule (`default_stack_sites`) to each stack."""

    site_kind = "block"

    #: "merge" or "clip": families name the methods their blocks support (`ModelAdapter.token_reduction_methods`)
    method: str

    def token_stacks(self, adapter: ModelAdapter) -> list[TokenStack]:
        """The stacks whose blocks support this method."""
        return [stack for stack in adapter.token_stacks() if self.method in stack.methods]

    def candidate_sites(self, adapter: ModelAdapter) -> list[BlockSite]:
        """The blocks the adapter can reduce with this method (none otherwise: `auto` then says so)."""
        return [block for stack in self.token_stacks(adapter) for block in stack.blocks]

    def default_sites(self, adapter: ModelAdapter, candidates: list[BlockSite]) -> list[BlockSite]:
        chosen = []
        for stack in self.token_stacks(adapter):
            inside = [site for site in candidates if stack.owns(site.name)]
            chosen += self.default_stack_sites(stack, inside) if inside else []
        return chosen

    @abstractmethod
    def default_stack_sites(self, stack: TokenStack, candidates: list[BlockSite]) -> list[BlockSite]:
        """The blocks of one stack `targets: [auto]` means."""

    @abstractmethod
    def plan_entry(self, adapter: ModelAdapter, site: BlockSite, params: dict[str, Any]) -> dict[str, Any]:
        """The plan of one targeted block (plain YAML data)."""

    @abstractmethod
    def step(self, entry: dict[str, Any], params: dict[str, Any]) -> MergeStep | ClipStep:
        """What a targeted block does, from its plan entry."""

    @abstractmethod
    def reducer_settings(self, stack: TokenStack, params: dict[str, Any]) -> dict[str, Any]:
        """This pass's settings of a stack's `ScheduledTokenReducer` (keyword arguments and attribute names)."""

    def conflict(self, adapter: ModelAdapter, sites: list[BlockSite], params: dict[str, Any], other: Pass,
                 other_sites: list) -> str | None:
        """The other token pass may share the model, not a block: a block reduces its tokens one way. (Windowed
        stacks, Swin's, support clipping only, so the two never share one.)"""
        if not isinstance(other, TokenReductionPass) or other.method == self.method:
            return None
        shared = sorted({site.name for site in sites} & {site.name for site in other_sites})
        if shared:
            return (f"both reduce the tokens of {shared[0]}, and a block reduces them one way; give them different "
                    f"blocks with targets/ignore (e.g. {other.name}.targets for the first blocks, "
                    f"{self.name}.targets for later ones)")
        return None

    def plan(self, adapter: ModelAdapter, sites: list[BlockSite], params: dict[str, Any],
             context: PassContext) -> dict[str, dict[str, Any]]:
        return {site.name: self.plan_entry(adapter, site, params) for site in sites}

    def rewrite(self, adapter: ModelAdapter, sites: list[BlockSite], params: dict[str, Any],
                plan: dict[str, dict[str, Any]], seed: int) -> None:
        for stack in self.token_stacks(adapter):
            if any(block.name in plan for block in stack.blocks):
                steps = [self.step(plan[block.name], params) if block.name in plan else None
                         for block in stack.blocks]
                installed = adapter.token_reducer(stack)
                if installed is None:
                    adapter.install_token_reducer(self.reducer(stack, steps, params), stack)
                else:  # the other token pass came first: its reducer takes this pass's blocks too
                    installed.add_steps(steps, **self.reducer_settings(stack, params))

    def reducer(self, stack: TokenStack, steps: list, params: dict[str, Any]):
        """One stack's reducer: windowed attention (Swin) keeps the same number of tokens in every window."""
        if stack.layout.window is not None:
            return WindowTokenReducer(steps)
        return ScheduledTokenReducer(steps, len(stack.layout.prefix_tokens), keep_all_tokens=stack.needs_all_tokens,
                                     **self.reducer_settings(stack, params))

    def reduced_stacks(self, adapter: ModelAdapter) -> list[tuple[TokenStack, Any]]:
        """(stack, reducer) for every stack this model's blocks carry a reducer on, in forward order."""
        found = [(stack, adapter.token_reducer(stack)) for stack in self.token_stacks(adapter)]
        return [(stack, reducer) for stack, reducer in found if reducer is not None]

    def statistics(self, adapter: ModelAdapter, sites: list[BlockSite]) -> dict[str, Any]:
        """The tokens each block ran on in the last forward. With one reduced stack, `tokens_in` is the count
        entering it; with several, a count per stack (by name)."""
        measured = [(stack, reducer, list(getattr(reducer, "last_tokens", [])))
                    for stack, reducer in self.reduced_stacks(adapter)]
        measured = [entry for entry in measured if entry[2]]
        if not measured:
            return {}
        after = {block.name: count for stack, _, tokens in measured for block, count in zip(stack.blocks, tokens[1:])}
        fractions = [fraction for _, reducer, _ in measured for fraction in reducer.last_fractions]
        lines = {stack.name: f"{tokens[0]} in; after each block: " + " ".join(str(t) for t in tokens[1:])
                 for stack, _, tokens in measured}
        single = len(measured) == 1
        return {
            "tokens_in": measured[0][2][0] if single else {stack.name: tokens[0] for stack, _, tokens in measured},
            "tokens_after_block": after,
            "summary": {"tokens per layer": next(iter(lines.values())) if single
                        else "; ".join(f"{name}: {line}" for name, line in lines.items()),
                        "mean tokens/N": round(sum(fractions) / len(fractions), 4)},
        }
