"""timm ResNets built from BasicBlock or Bottleneck residual blocks (ResNet-18/34/50/101, ResNeXt, SE/ECA-ResNet)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from compressor.models.base import AttentionSite, BlockSite, FFNSite, TokenLayout
from compressor.models.timm_common import TimmAdapter, timm_is_loaded

#: the stage modules of timm's ResNet, named as its checkpoints require
_STAGES = ("layer1", "layer2", "layer3", "layer4")


class TimmResNetAdapter(TimmAdapter):
    """No attention and no FFN: only residual blocks, one stack per stage ("stage0" is `layer1`).

    A block lists the convolutions of its main path (conv1, conv2 and, for bottlenecks, conv3), which are what
    tied-weight passes share; the shortcut's `downsample` conv is left out.
    """

    family: ClassVar[str] = "timm-resnet"
    display_name: ClassVar[str] = "ResNet (timm)"
    timm_modules: ClassVar[tuple[str, ...]] = ("resnet",)

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        """A timm ResNet, or the features-only wrapper timm builds of one (`features_only=True`, as DETR's timm
        backbone is: the same modules under the same names, up to the last stage it returns)."""
        if not timm_is_loaded():
            return False
        from timm.models import FeatureDictNet, FeatureListNet
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        if isinstance(model, (FeatureListNet, FeatureDictNet)):
            stages = [getattr(model, stage, None) for stage in _STAGES]
            stages = stages[:stages.index(None)] if None in stages else stages
        elif isinstance(model, ResNet):
            stages = [getattr(model, stage) for stage in _STAGES]
        else:
            return False
        return bool(stages) and all(isinstance(block, (BasicBlock, Bottleneck)) for stage in stages for block in stage)

    def _stages(self) -> list[str]:
        """The stage modules present (a features-only model may stop before `layer4`)."""
        return [stage for stage in _STAGES if hasattr(self.model, stage)]

    def attention_sites(self) -> list[AttentionSite]:
        return []

    def ffn_sites(self) -> list[FFNSite]:
        return []

    def blocks(self) -> list[BlockSite]:
        from timm.models.resnet import Bottleneck

        sites = []
        for stage_index, stage in enumerate(self._stages()):
            for index, block in enumerate(getattr(self.model, stage)):
                name = f"{stage}.{index}"
                bottleneck = isinstance(block, Bottleneck)
                convs = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
                sites.append(BlockSite(name=name, stack=f"stage{stage_index}", layer=index,
                                       kind="bottleneck" if bottleneck else "basic",
                                       convs=tuple(f"{name}.{conv}" for conv in convs)))
        return sites

    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        return TokenLayout()
