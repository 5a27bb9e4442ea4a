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

from compressor.models.base import AttentionSite, BlockSite, FFNSite, TokenLayout
from compressor.models.hf_common import HFVisionAdapter, as_pair
from compressor.ops.tokens import split_heads


def token_reducing_layer_forward(layer, hidden_states: torch.Tensor, input_dimensions: tuple[int, int],
                                 always_partition: bool = False, **kwargs) -> tuple[torch.Tensor, None]:
    """SwinLayer.forward (inference) keeping the same number of tokens in every window (see
    `compressor.ops.window_tokens`); attention weights are not returned."""
    reducer = layer.token_reducer
    if layer.token_block == 0:
        reducer.start(hidden_states.shape[1])
    if reducer.uses_original_forward(layer.token_block):
        output = super(type(layer), layer).forward(hidden_states, input_dimensions, always_partition, **kwargs)
        reducer.record(hidden_states.shape[1], 1.0)
        return output[0], None
    if not always_partition:
        layer.set_shift_and_window_size(input_dimensions)
    attention = layer.attention
    height, width = input_dimensions
    window, shift = int(layer.window_size), int(layer.shift_size)
    padded = (-(-height // window) * window, -(-width // window) * window)
    hidden_states = reducer.run_block(
        layer.token_block, hidden_states, (height, width), (window, window), (shift, shift), pad_then_roll=True,
        norm=layer.layernorm_before,
        qkv=lambda x: tuple(split_heads(p(x), attention.head_dim)
                            for p in (attention.q_proj, attention.k_proj, attention.v_proj)),
        output=attention.o_proj, ffn=lambda x: layer.mlp(layer.layernorm_after(x)),
        position_bias=attention.relative_position_bias()[0],
        shift_mask=layer.get_attn_mask(*padded, dtype=hidden_states.dtype, device=hidden_states.device),
        scale=attention.scaling)
    return hidden_states, None


class HFSwinAdapter(HFVisionAdapter):
    """SwinModel / SwinForImageClassification. Stacks are "stage0".."stage3"; `layer` counts blocks per stage.

    primary_output: the head's logits, else the pooled (token-averaged) output, else the token average of the
    final hidden states.
    """

    family = "hf-swin"
    display_name = "Swin (transformers)"
    task = "image-classification"
    model_types = ("swin",)

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
    token_block_forward = token_reducing_layer_forward
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
