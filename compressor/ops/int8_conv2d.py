"""A Conv2d with int8 weights (one scale per output filter), computing with the dequantized weight.

Weight-only: the convolutions this toolkit meets (ResNet stages, a ViT patch embedding) are small or few, and
PyTorch has no dynamic-activation int8 convolution; the gain is the file and memory size (×~0.25 of the weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compressor.ops.int8_weights import dequantize, quantize_per_channel


class Int8Conv2d(nn.Module):
    """A zero-padded Conv2d whose `weight` is int8 with per-filter `weight_scale` (out, 1); keeps stride, padding,
    dilation, groups and its float bias."""

    def __init__(self, like: nn.Conv2d):
        super().__init__()
        if like.padding_mode != "zeros":
            raise ValueError(f"only zero-padded convolutions can be quantized, got padding_mode={like.padding_mode!r}")
        self.in_channels, self.out_channels = like.in_channels, like.out_channels
        self.kernel_size, self.stride, self.padding = like.kernel_size, like.stride, like.padding
        self.dilation, self.groups = like.dilation, like.groups
        weight, scale = quantize_per_channel(like.weight)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.bias = nn.Parameter(like.bias.detach().float().clone()) if like.bias is not None else None
        self.activations = "none"
        self.train(like.training)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized_weight().to(x.dtype), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, weight=int8 per channel")
