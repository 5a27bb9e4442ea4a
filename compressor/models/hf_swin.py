"""HF Swin: four stages of window-attention layers over a shrinking patch grid, no class token.

In transformers 5.23 `SwinAttention` (at `<base>.encoder.layers.<stage>.blocks.<j>.attention`) owns
`q_proj/k_proj/v_proj/o_proj` and calls the AttentionInterface once per window batch, with the relative position
bias (plus the shifted-window mask on odd blocks) as an additive float mask of shape
(batch × windows, heads, window², window²). A replacement kernel therefore sees window-local attention and must
honour a float mask.
"""

from __future__ import annotations

import math

import torch

from compressor.models.base import AttentionSite, BlockSite, FFNSite, TRANSFORMER_PARTS, TokenLayout
from compressor.models.hf_common import HFVisionAdapter, as_pair
from compressor.models.patches.transformers import TOKEN_REDUCING_SWIN_LAYER


class HFSwinAdapter(HFVisionAdapter):
    """SwinModel / SwinForImageClassification. Stacks are "stage0".."stage3"; `layer` counts blocks per stage.

    primary_output: the head's logits, else the pooled (token-averaged) output, else the token average of the
    final hidden states.
    """

    family = "hf-swin"
    display_name = "Swin (transformers)"
    task = "image-classification"
    model_types = ("swin",)
    cost_part_children = TRANSFORMER_PARTS

    def _blocks_by_stage(self) -> list[tuple[str, int, str]]:
        """(stack, index within stage, block name) for every SwinLayer, in forward order."""
        from transformers.models.swin.modeling_swin import SwinStage

        found = []
        for stage_index, (stage_name, stage) in enumerate(self.named_modules_of_type(SwinStage)):
            found += [(f"stage{stage_index}", index, f"{stage_name}.blocks.{index}")
                      for index in range(len(stage.blocks))]
        return found

    def attention_sites(self) -> list[AttentionSite]:
        return [self.make_attention_site(f"{name}.attention", stack, index, scope="window")
                for stack, index, name in self._blocks_by_stage()]

    def ffn_sites(self) -> list[FFNSite]:
        return [self.make_ffn_site(f"{name}.mlp", stack, index) for stack, index, name in self._blocks_by_stage()]

    def blocks(self) -> list[BlockSite]:
        return [BlockSite(name=name, stack=stack, layer=index, kind="transformer", attention=f"{name}.attention",
                          ffn=f"{name}.mlp") for stack, index, name in self._blocks_by_stage()]

    # --- token reduction ------------------------------------------------------------------------------------------
    token_block_patch = TOKEN_REDUCING_SWIN_LAYER
    token_reduction_methods = ("clip",)

    def token_reduction_blocks(self) -> list[BlockSite]:
        return self.blocks()

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        """The patch grid entering stage 0 (the patch embedding pads to a whole number of patches)."""
        inputs = inputs if inputs is not None else self.example_inputs()
        height, width = inputs["pixel_values"].shape[-2:]
        patch_height, patch_width = as_pair(self.config.patch_size)
        grid = (math.ceil(height / patch_height), math.ceil(width / patch_width))
        return TokenLayout(grid=grid, window=as_pair(self.config.window_size), sequence_length=grid[0] * grid[1])
