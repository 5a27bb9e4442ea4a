"""What every timm family shares: inputs, outputs and attention kernels.

timm is imported inside the functions that need it: importing it costs seconds (it pulls in torchvision), and a
model can only be a timm model once something has imported timm, so transformers-only runs never pay for it.
Loading and rebuilding timm models is `compressor.loaders.timm_models`.
"""

from __future__ import annotations

import sys
from abc import abstractmethod
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.models.base import (AttentionKernel, AttentionSite, BlockSite, FFNSite, ModelAdapter,
                                    TRANSFORMER_PARTS)
from compressor.models.patches.timm import KERNEL_ATTENTION


def timm_is_loaded() -> bool:
    """A model can only be a timm model if timm has been imported: `handles` checks this before importing timm."""
    return "timm" in sys.modules


# ----------------------------------------------------------------------------------------------------------------
# Attention kernels
# ----------------------------------------------------------------------------------------------------------------
def install_timm_attention_kernel(module: nn.Module, name: str, kernel: AttentionKernel) -> None:
    """Route the timm attention `module` (called `name` in messages) through `kernel`, or say why it cannot be."""
    if not KERNEL_ATTENTION.applies_to(type(module)):
        raise CompressorError(
            f"{name} is a timm {type(module).__name__}: only global self-attention (timm.layers.Attention) can be "
            "routed through an attention kernel yet; leave this module out of the pass's targets")
    KERNEL_ATTENTION.install({name: module})
    module.add_module("attention_kernel", kernel)


# ----------------------------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------------------------
class TimmAdapter(ModelAdapter):
    """Inputs, outputs and kernels for any timm image model; subclasses say where the blocks are.

    `self.processor` may hold a timm data config (as `load_timm_model` returns it); without one the adapter
    resolves it from the model, as timm's own scripts do.
    """

    library: ClassVar[str] = "timm"
    task: ClassVar[str] = "image-classification"
    #: the timm registry modules whose architectures this adapter describes: checked before building a model
    timm_modules: ClassVar[tuple[str, ...]] = ()

    def data_config(self) -> dict[str, Any]:
        """timm's preprocessing for this model: input size, interpolation, mean/std, crop."""
        if isinstance(self.processor, dict):
            return self.processor
        from timm.data import resolve_input_data_config

        return resolve_input_data_config(self.model)

    def example_inputs(self, batch_size: int = 1, size: tuple[int, ...] | None = None,
                       seed: int = 0) -> dict[str, torch.Tensor]:
        from timm.models import get_model_input_config

        channels, *native_size = get_model_input_config(self.model)["input_size"]
        height, width = size or native_size
        generator = torch.Generator().manual_seed(seed)
        return {"x": torch.randn(batch_size, channels, height, width, generator=generator)}

    def prepare_inputs(self, examples: list) -> dict[str, torch.Tensor]:
        """Images through timm's eval transform (resize, center crop, normalise) for this model."""
        from timm.data import create_transform

        transform = create_transform(**self.data_config(), is_training=False)
        return {"x": torch.stack([transform(image.convert("RGB")) for image in examples])}

    def has_head(self) -> bool:
        return getattr(self.model, "num_classes", 1) > 0

    def primary_output(self, outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits; pooled features for a model built with num_classes=0 (its head is then the identity).

        A distilled DeiT in distillation-training mode returns (class logits, distillation logits): they are
        averaged, as timm does at inference.
        """
        if isinstance(outputs, (tuple, list)):
            outputs = torch.stack(list(outputs)).mean(0)
        return outputs.flatten(1)

    def install_attention_kernel(self, site: AttentionSite, kernel: AttentionKernel) -> None:
        try:
            module = self.module(site.name)
        except AttributeError:
            raise CompressorError(f"no attention module named {site.name!r} in this {self.display_name} "
                                  "model; take site names from the adapter's attention_sites()") from None
        install_timm_attention_kernel(module, site.name, kernel)

    def patch_grid(self, inputs: dict[str, torch.Tensor] | None) -> tuple[int, int]:
        """The (rows, columns) of patch tokens the model's patch embedding makes from `inputs`."""
        height, width = (inputs or self.example_inputs())["x"].shape[-2:]
        return tuple(self.model.patch_embed.dynamic_feat_size((height, width)))


class TimmTransformerAdapter(TimmAdapter):
    """Sites of timm transformers whose blocks each hold an `attn` and an `mlp` (fc1, act, fc2) module."""

    #: "global" or "window", for every attention site of the family
    attention_scope: ClassVar[str]
    cost_part_children = TRANSFORMER_PARTS

    @abstractmethod
    def named_blocks(self) -> Iterator[tuple[str, int, str, nn.Module]]:
        """(stack, index in stack, qualified name, block) for every transformer block, in forward order."""

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for stack, layer, name, block in self.named_blocks():
            attention = block.attn
            head_dim = getattr(attention, "head_dim", None) or attention.qkv.out_features // (3 * attention.num_heads)
            qkv = f"{name}.attn.qkv"
            sites.append(AttentionSite(
                name=f"{name}.attn", stack=stack, layer=layer, kind="self", scope=self.attention_scope,
                num_heads=attention.num_heads, head_dim=head_dim, query=qkv, key=qkv, value=qkv,
                output=f"{name}.attn.proj"))
        return sites

    def ffn_sites(self) -> list[FFNSite]:
        return [FFNSite(name=f"{name}.mlp", stack=stack, layer=layer, fc1=f"{name}.mlp.fc1", fc2=f"{name}.mlp.fc2",
                        activation=f"{name}.mlp.act")
                for stack, layer, name, _ in self.named_blocks()]

    def blocks(self) -> list[BlockSite]:
        return [BlockSite(name=name, stack=stack, layer=layer, kind="transformer", attention=f"{name}.attn",
                          ffn=f"{name}.mlp")
                for stack, layer, name, _ in self.named_blocks()]
