"""Family adapters: one file per family, registered here in the order they are tried."""

from __future__ import annotations

from torch import nn

from compressor.errors import UnsupportedModelError
from compressor.models.base import (AttentionKernel, AttentionSite, BlockSite, FFNSite, ModelAdapter,
                                    TokenLayout)
from compressor.models.cifar_resnet import CifarResNetAdapter
from compressor.models.hf_bert import HFBertAdapter
from compressor.models.hf_conditional_detr import HFConditionalDetrAdapter
from compressor.models.hf_detr import HFDetrAdapter
from compressor.models.hf_resnet import HFResNetAdapter
from compressor.models.hf_swin import HFSwinAdapter
from compressor.models.hf_vit import HFViTAdapter
from compressor.models.timm_resnet import TimmResNetAdapter
from compressor.models.timm_swin import TimmSwinAdapter
from compressor.models.timm_vit import TimmViTAdapter

ADAPTER_CLASSES: list[type[ModelAdapter]] = [
    HFViTAdapter, HFSwinAdapter, HFResNetAdapter, HFDetrAdapter, HFConditionalDetrAdapter, HFBertAdapter,
    TimmViTAdapter, TimmSwinAdapter, TimmResNetAdapter, CifarResNetAdapter,
]

#: what error messages list as supported
SUPPORTED_FAMILIES = ", ".join(cls.display_name for cls in ADAPTER_CLASSES)


def adapter_for(model: nn.Module, processor=None) -> ModelAdapter:
    """The adapter describing `model`, or a one-line error naming what was found and what is supported."""
    for cls in ADAPTER_CLASSES:
        if cls.handles(model):
            return cls(model, processor=processor)
    raise UnsupportedModelError(
        f"unsupported architecture {type(model).__name__}; supported: {SUPPORTED_FAMILIES}")


__all__ = ["ADAPTER_CLASSES", "SUPPORTED_FAMILIES", "adapter_for", "AttentionKernel", "AttentionSite",
           "BlockSite", "FFNSite", "ModelAdapter", "TokenLayout"]
