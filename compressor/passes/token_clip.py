"""Token clipping (EViT, Liang et al. 2022; sparse encoder updates as in Sparse DETR, Roh et al. 2022): after a
targeted block's attention, only the most important tokens go on; the rest are dropped, or fused into one extra
token weighted by their importance. Importance is the attention received from the class token where there is one,
else the mean attention received; or, chosen by the user, the norm of each token's value vector, which keeps a
detector's object tokens where mean attention drops them (docs/passes.md). Where the output needs every token (DETR's decoder, BERT's token states), the
tokens that left are put back at the end with the value they had when they left: they passed the remaining
layers unchanged. In windowed attention (Swin) every window keeps the same number of tokens, in every block after
the first (see `compressor.ops.window_tokens`).
"""

from __future__ import annotations

from typing import Any

from compressor.errors import RecipeError
from compressor.models.base import BlockSite, ModelAdapter, TokenStack
from compressor.ops.token_reduction import ClipStep
from compressor.passes.base import Param, Pass
from compressor.passes.token_reduction import TokenReductionPass

#: where EViT clips a 12-layer ViT (after blocks 4, 7 and 10), as fractions of the depth
EVIT_DEPTHS = (0.25, 0.5, 0.75)


class TokenClipPass(TokenReductionPass):
    name = "token_clip"
    summary = "EViT-style clipping: keep the most attended tokens at chosen blocks, drop or fuse the rest."
    method = "clip"
    params = {
        "keep_ratio": Param("float", 0.7, "Fraction of the non-prefix tokens each targeted block keeps (ratios "
                            "compound over blocks); `1` keeps every token and reproduces the original model.",
                            greater_than=0, maximum=1),
        "fuse": Param("bool", True, "Fuse the clipped tokens into one extra token, their importance-weighted "
                      "average (EViT); `false` drops them."),
        "importance": Param("str", "auto", "How tokens are ranked: `cls` (attention received from the class "
                            "token), `mean` (mean attention received; needs the full attention matrix), "
                            "`value_norm` (the norm of each token's value vector; any attention kernel), or "
                            "`auto` (`cls` where the model has a class token, else `mean`).",
                            choices=("auto", "cls", "mean", "value_norm")),
    }

    def default_stack_sites(self, stack: TokenStack, candidates: list[BlockSite]) -> list[BlockSite]:
        """With a class token, EViT's three blocks at 1/4, 1/2 and 3/4 of the depth; with windowed attention
        (Swin) every block (the first only scores tokens: nothing has ranked them yet); otherwise (the DETR
        encoder) the first block, so every later block runs on the kept tokens only."""
        layout = stack.layout
        if layout.window is not None:
            return candidates
        if "cls" not in layout.prefix_tokens:
            return candidates[:1]
        chosen = sorted({min(len(candidates) - 1, int(len(candidates) * depth + 0.5)) for depth in EVIT_DEPTHS})
        return [candidates[index] for index in chosen]

    def plan_entry(self, adapter: ModelAdapter, site: BlockSite, params: dict[str, Any]) -> dict[str, Any]:
        return {"keep_ratio": float(params["keep_ratio"])}

    def step(self, entry: dict[str, Any], params: dict[str, Any]) -> ClipStep:
        return ClipStep(float(entry["keep_ratio"]), bool(params["fuse"]))

    def conflict(self, adapter: ModelAdapter, sites: list[BlockSite], params: dict[str, Any], other: Pass,
                 other_sites: list) -> str | None:
        """Ranking by mean attention needs the attention matrix, which an attention kernel (act) never forms; and
        token_merge may not share a block (`TokenReductionPass.conflict`)."""
        shared_reducer = super().conflict(adapter, sites, params, other, other_sites)
        if shared_reducer is not None or other.replaces != "attention_kernel":
            return shared_reducer
        for stack in self.token_stacks(adapter):
            if self.importance(stack, params) != "mean":
                continue
            for site in (site for site in sites if stack.owns(site.name)):
                inside = [s.name for s in other_sites if s.name.startswith(site.name + ".")]
                if inside:
                    return (f"token_clip ranks the tokens of {site.name} by the mean attention they receive, which "
                            f"needs the full attention matrix {other.name}'s attention kernel never forms at "
                            f"{inside[0]}; leave that layer out of one of the two passes (targets/ignore)")
        return None

    def check_settings(self, adapter: ModelAdapter, sites: list[BlockSite], params: dict[str, Any]) -> None:
        """A ranking a targeted stack cannot give is refused up front (windowed stacks, whose reducer takes no
        settings, included)."""
        for stack in self.token_stacks(adapter):
            if any(stack.owns(site.name) for site in sites):
                self.importance(stack, params)

    def reducer_settings(self, stack: TokenStack, params: dict[str, Any]) -> dict[str, Any]:
        return {"importance": self.importance(stack, params)}

    def importance(self, stack: TokenStack, params: dict[str, Any]) -> str:
        """`auto`: the class token's attention where the stack has one, else the mean attention received
        (windowed stacks always rank by the attention received inside each window)."""
        has_cls = stack.layout.prefix_tokens[:1] == ("cls",)
        if params["importance"] == "value_norm" and stack.layout.window is not None:
            raise RecipeError(f"token_clip.importance: `value_norm` is not available in windowed attention, and "
                              f"{stack.name} ranks its tokens inside each window by the attention they receive; "
                              "use `auto`")
        if params["importance"] == "cls" and not has_cls:
            raise RecipeError(f"token_clip.importance: `cls` needs a class token, and {stack.name} has none; use "
                              "`mean` or `auto`")
        if params["importance"] == "auto":
            return "cls" if has_cls else "mean"
        return params["importance"]
