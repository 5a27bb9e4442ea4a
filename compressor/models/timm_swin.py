"""timm Swin Transformers (v1): shifted-window attention in hierarchical stages."""

from __future__ import annotations

from typing import ClassVar, Iterator

import torch
from torch import nn

from compressor.models.base import BlockSite, TokenLayout
from compressor.models.patches.timm import TOKEN_REDUCING_SWIN_BLOCK
from compressor.models.timm_common import TimmTransformerAdapter, timm_is_loaded


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
    token_block_patch = TOKEN_REDUCING_SWIN_BLOCK
    token_reduction_methods = ("clip",)

    def token_reduction_blocks(self) -> list[BlockSite]:
        return self.blocks()

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        """The first stage's patch grid and window (a window never exceeds the grid it partitions)."""
        grid = self.patch_grid(inputs)
        first_block = self.model.layers[0].blocks[0]
        return TokenLayout(grid=grid, window=tuple(first_block.window_size), sequence_length=grid[0] * grid[1])
