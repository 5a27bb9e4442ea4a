"""timm Vision Transformers: ViT, DeiT (and distilled DeiT), ViTs with register tokens."""

from __future__ import annotations

from typing import ClassVar, Iterator

import torch
from torch import nn

from compressor.models.base import BlockSite, TokenLayout
from compressor.models.patches import unpatched_class
from compressor.models.patches.timm import TOKEN_REDUCING_VIT_BLOCK
from compressor.models.timm_common import TimmTransformerAdapter, timm_is_loaded

#: the names of the distillation and class tokens, by the model attribute holding each
_PREFIX_TOKEN_ATTRIBUTES = (("cls_token", "cls"), ("dist_token", "distillation"))


class TimmViTAdapter(TimmTransformerAdapter):
    """`blocks.{i}.attn` global self-attention and `blocks.{i}.mlp`, all in one "encoder" stack.

    Every block is described; only those whose attention is `timm.layers.Attention` take an attention kernel.
    """

    family: ClassVar[str] = "timm-vit"
    display_name: ClassVar[str] = "ViT/DeiT (timm)"
    timm_modules: ClassVar[tuple[str, ...]] = ("vision_transformer", "deit")
    attention_scope: ClassVar[str] = "global"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        """A timm VisionTransformer whose blocks keep separate `attn` and `mlp` modules (not the parallel kinds)."""
        if not timm_is_loaded():
            return False
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer) and all(
            hasattr(block, "attn") and hasattr(getattr(block, "mlp", None), "fc2") for block in model.blocks)

    def named_blocks(self) -> Iterator[tuple[str, int, str, nn.Module]]:
        for index, block in enumerate(self.model.blocks):
            yield "encoder", index, f"blocks.{index}", block

    # --- token reduction ------------------------------------------------------------------------------------------
    token_block_patch = TOKEN_REDUCING_VIT_BLOCK

    def token_reduction_blocks(self) -> list[BlockSite]:
        """Blocks with timm's standard `Attention` (others compute attention their own way)."""
        from timm.layers import Attention

        blocks = self.blocks()
        return blocks if all(unpatched_class(type(self.module(b.attention))) is Attention for b in blocks) else []

    def output_needs_all_tokens(self) -> bool:
        """Class-token pooling reads the prefix tokens only; average or attention pooling reads every token."""
        return not (self.model.global_pool == "token" and self.model.attn_pool is None)

    def prefix_tokens(self) -> tuple[str, ...]:
        """Class, distillation, then register tokens, in the order the model puts them before the patches."""
        named = tuple(label for attribute, label in _PREFIX_TOKEN_ATTRIBUTES
                      if isinstance(getattr(self.model, attribute, None), torch.Tensor))
        return named + ("register",) * (self.model.num_prefix_tokens - len(named))

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        grid = self.patch_grid(inputs)
        return TokenLayout(prefix_tokens=self.prefix_tokens(), grid=grid,
                           sequence_length=self.model.num_prefix_tokens + grid[0] * grid[1])
