"""HF ResNet: a convolutional stem and four stages of basic or bottleneck blocks; no attention, no FFN.

Blocks are `ResNetBasicLayer` / `ResNetBottleNeckLayer` at `<base>.encoder.stages.<s>.layers.<j>`; each main path
is `layer.<k>` (a ResNetConvLayer: `convolution`, `normalization`, `activation`), the projection shortcut
(when there is one) is `shortcut.convolution`.
"""

from __future__ import annotations

import torch

from compressor.errors import CompressorError
from compressor.models.base import AttentionKernel, AttentionSite, BlockSite, FFNSite, RESNET_PARTS, TokenLayout
from compressor.models.hf_common import HFVisionAdapter


class HFResNetAdapter(HFVisionAdapter):
    """ResNetModel / ResNetForImageClassification. Stacks are "stage0".."stage3".

    A block's `convs` are its main-path convolutions in forward order (1×1 reduce, 3×3, 1×1 expand for a
    bottleneck; two 3×3 for a basic block) — the weights a tied-weight rewrite pairs; the shortcut projection is
    not among them. primary_output: the head's logits, else the globally pooled features.
    """

    family = "hf-resnet"
    display_name = "ResNet (transformers)"
    task = "image-classification"
    model_types = ("resnet",)
    cost_part_children = RESNET_PARTS

    def attention_sites(self) -> list[AttentionSite]:
        return []

    def ffn_sites(self) -> list[FFNSite]:
        return []

    def blocks(self) -> list[BlockSite]:
        from transformers.models.resnet.modeling_resnet import ResNetBottleNeckLayer, ResNetStage

        found = []
        for stage_index, (stage_name, stage) in enumerate(self.named_modules_of_type(ResNetStage)):
            for index, block in enumerate(stage.layers):
                name = f"{stage_name}.layers.{index}"
                kind = "bottleneck" if isinstance(block, ResNetBottleNeckLayer) else "basic"
                convs = tuple(f"{name}.layer.{k}.convolution" for k in range(len(block.layer)))
                found.append(BlockSite(name=name, stack=f"stage{stage_index}", layer=index, kind=kind, convs=convs))
        return found

    def install_attention_kernel(self, site: AttentionSite, kernel: AttentionKernel) -> None:
        raise CompressorError(f"{site.name}: ResNet models have no attention to replace; attention passes do not "
                              f"apply to the {self.display_name} family")

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        return TokenLayout()
