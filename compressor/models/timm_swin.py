"""timm Swin Transformers (v1): shifted-window attention in hierarchical stages."""

from __future__ import annotations

from typing import ClassVar, Iterator

import torch
from torch import nn

from compressor.models.base import BlockSite, TokenLayout
from compressor.models.timm_common import TimmTransformerAdapter, timm_is_loaded


def token_reducing_block_forward(block, x: torch.Tensor) -> torch.Tensor:
    """SwinTransformerBlock.forward (inference) keeping the same number of tokens in every window (see
    `compressor.ops.window_tokens`)."""
    reducer = block.token_reducer
    batch, height, width, channels = x.shape
    if block.token_block == 0:
        reducer.start(height * width)
    if reducer.uses_original_forward(block.token_block):
        reducer.record(height * width, 1.0)
        return super(type(block), block).forward(x)
    attention = block.attn
    if getattr(block, "dynamic_mask", False):
        padded = [-(-size // w) * w for size, w in zip((height, width), block.window_size)]
        shift_mask = block.get_attn_mask(x.new_zeros(batch, *padded, 1))
    else:
        shift_mask = block.attn_mask

    def qkv(tokens: torch.Tensor):
        b, n, _ = tokens.shape
        return attention.qkv(tokens).reshape(b, n, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    hidden = reducer.run_block(
        block.token_block, x.reshape(batch, height * width, channels), (height, width), block.window_size,
        block.shift_size, pad_then_roll=False, norm=block.norm1, qkv=qkv, output=attention.proj,
        ffn=lambda t: block.mlp(block.norm2(t)), position_bias=attention._get_rel_pos_bias()[0],
        shift_mask=shift_mask, scale=attention.scale)
    return hidden.view(batch, height, width, channels)


class TimmSwinAdapter(TimmTransformerAdapter):
    """`layers.{s}.blocks.{i}.attn` window attention and `.mlp`, one stack per stage ("stage0", "stage1", ...).

    Window attention adds a relative-position bias and a shift mask inside each window, so it is not routed
    through attention kernels yet: `install_attention_kernel` says so.
    """

    family: ClassVar[str] = "timm-swin"
    display_name: ClassVar[str] = "Swin (timm)"
    timm_modules: ClassVar[tuple[str, ...]] = ("swin_transformer",)
    attention_scope: ClassVar[str] = "window"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        if not timm_is_loaded():
            return False
        from timm.models.swin_transformer import SwinTransformer

        return isinstance(model, SwinTransformer)

    def named_blocks(self) -> Iterator[tuple[str, int, str, nn.Module]]:
        for stage_index, stage in enumerate(self.model.layers):
            for index, block in enumerate(stage.blocks):
                yield f"stage{stage_index}", index, f"layers.{stage_index}.blocks.{index}", block

    # --- token reduction ------------------------------------------------------------------------------------------
    token_block_forward = token_reducing_block_forward
    token_reduction_methods = ("clip",)

    def token_reduction_blocks(self) -> list[BlockSite]:
        return self.blocks()

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        """The first stage's patch grid and window (a window never exceeds the grid it partitions)."""
        grid = self.patch_grid(inputs)
        first_block = self.model.layers[0].blocks[0]
        return TokenLayout(grid=grid, window=tuple(first_block.window_size), sequence_length=grid[0] * grid[1])
