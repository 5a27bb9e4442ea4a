"""ToMe token merging (Bolya et al., "Token Merging: Your ViT but Faster"): after each targeted block's attention,
bipartite soft matching merges the `r` most similar token pairs (keys as the similarity), merged tokens are
size-weighted averages, and proportional attention (log size added to the logits) keeps softmax as if the
originals were all there. Where the output needs every token, the full token map is restored at the end (unmerge).
"""

from __future__ import annotations

from typing import Any

from compressor.models.base import BlockSite, ModelAdapter, TokenStack
from compressor.ops.token_reduction import MergeStep
from compressor.passes.base import Param
from compressor.passes.token_reduction import TokenReductionPass


class TokenMergePass(TokenReductionPass):
    name = "token_merge"
    summary = "ToMe: merge the r most similar token pairs after every block's attention, proportional attention."
    method = "merge"
    params = {
        "r": Param("int", 8, "Token pairs merged in each targeted block (the class/distillation tokens never "
                   "are); `0` merges nothing and reproduces the original model.", minimum=0),
        "proportional_attention": Param("bool", True, "Add log(size) to the attention logits of merged tokens "
                                        "(ToMe). `false` gives plain bipartite merging."),
    }

    def default_stack_sites(self, stack: TokenStack, candidates: list[BlockSite]) -> list[BlockSite]:
        """Every block, as in ToMe."""
        return candidates

    def plan_entry(self, adapter: ModelAdapter, site: BlockSite, params: dict[str, Any]) -> dict[str, Any]:
        return {"r": int(params["r"])}

    def step(self, entry: dict[str, Any], params: dict[str, Any]) -> MergeStep:
        return MergeStep(int(entry["r"]))

    def reducer_settings(self, stack: TokenStack, params: dict[str, Any]) -> dict[str, Any]:
        return {"proportional_attention": bool(params["proportional_attention"])}
