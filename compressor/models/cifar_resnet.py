"""The CIFAR ResNet (`compressor.architectures.cifar_resnet`, model_type `cifar_resnet`): three stages of BasicBlocks.

Blocks are `layer<s>.<j>` with main-path convolutions `conv1`, `conv2` and their BatchNorms `bn1`, `bn2`; the
option-A shortcut has no parameters. Like every ResNet: no attention, no FFN.
"""

from __future__ import annotations

from compressor.models.base import BlockSite
from compressor.models.hf_resnet import HFResNetAdapter


class CifarResNetAdapter(HFResNetAdapter):
    """Stacks are "stage0".."stage2" (`layer1`..`layer3`); primary_output is the logits."""

    family = "cifar-resnet"
    display_name = "CIFAR ResNet (akamaster layout)"
    model_types = ("cifar_resnet",)
    default_image_size = (32, 32)

    def blocks(self) -> list[BlockSite]:
        found = []
        for stage_index, stage in enumerate(self.model.stages):
            for index in range(len(stage)):
                name = f"layer{stage_index + 1}.{index}"
                found.append(BlockSite(name=name, stack=f"stage{stage_index}", layer=index, kind="basic",
                                       convs=(f"{name}.conv1", f"{name}.conv2"),
                                       norms=(f"{name}.bn1", f"{name}.bn2")))
        return found
