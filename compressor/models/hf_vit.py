"""HF ViT and DeiT: a plain stack of pre-norm transformer layers over a class token (DeiT: class + distillation
token) and a square patch grid.

In transformers 5.x both live at `<base>.layers.<i>` (base `vit` or `deit` under a head, the root for the bare
model); each layer's `attention` (ViTAttention / DeiTAttention) owns `q_proj/k_proj/v_proj/o_proj` and calls the
AttentionInterface, and `mlp` owns `fc1/fc2/activation_fn`.
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.models.base import AttentionSite, BlockSite, FFNSite, TRANSFORMER_PARTS, TokenLayout
from compressor.models.hf_common import HFVisionAdapter, as_pair
from compressor.models.patches.transformers import TOKEN_REDUCING_VIT_LAYER


def _layer_classes() -> tuple[type, ...]:
    from transformers.models.deit.modeling_deit import DeiTLayer
    from transformers.models.vit.modeling_vit import ViTLayer

    return ViTLayer, DeiTLayer


class HFViTAdapter(HFVisionAdapter):
    """ViTModel / ViTForImageClassification / DeiT* (incl. DeiTForImageClassificationWithTeacher).

    primary_output: the head's logits (DeiT with teacher: the mean of its class and distillation heads, what it
    predicts at inference); for bare models the pooler output when there is a pooler, else the final class-token
    state.
    """

    family = "hf-vit"
    display_name = "ViT/DeiT (transformers)"
    task = "image-classification"
    model_types = ("vit", "deit")
    cost_part_children = TRANSFORMER_PARTS

    def _layers(self) -> list[tuple[str, Any]]:
        return self.named_modules_of_type(*_layer_classes())

    def attention_sites(self) -> list[AttentionSite]:
        return [self.make_attention_site(f"{name}.attention", "encoder", index)
                for index, (name, _) in enumerate(self._layers())]

    def ffn_sites(self) -> list[FFNSite]:
        return [self.make_ffn_site(f"{name}.mlp", "encoder", index) for index, (name, _) in enumerate(self._layers())]

    def blocks(self) -> list[BlockSite]:
        return [BlockSite(name=name, stack="encoder", layer=index, kind="transformer", attention=f"{name}.attention",
                          ffn=f"{name}.mlp") for index, (name, _) in enumerate(self._layers())]

    @property
    def prefix_tokens(self) -> tuple[str, ...]:
        return ("cls", "distillation") if self.config.model_type == "deit" else ("cls",)

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        inputs = inputs if inputs is not None else self.example_inputs()
        height, width = inputs["pixel_values"].shape[-2:]
        patch_height, patch_width = as_pair(self.config.patch_size)
        grid = (height // patch_height, width // patch_width)
        return TokenLayout(prefix_tokens=self.prefix_tokens, grid=grid,
                           sequence_length=len(self.prefix_tokens) + grid[0] * grid[1])

    # --- token reduction ------------------------------------------------------------------------------------------
    token_block_patch = TOKEN_REDUCING_VIT_LAYER

    def token_reduction_blocks(self) -> list[BlockSite]:
        return self.blocks()

    def output_needs_all_tokens(self) -> bool:
        """Heads read the class (and distillation) token only; a bare model's token states stay complete."""
        return type(self.model).__name__ not in ("ViTForImageClassification", "DeiTForImageClassification",
                                                 "DeiTForImageClassificationWithTeacher")

    def bare_model_output(self, outputs: Any) -> torch.Tensor:
        return outputs.last_hidden_state[:, 0]
