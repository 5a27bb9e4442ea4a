"""Symmetric int8 weights with one float scale per output channel, and the activation quantization of PyTorch's
dynamic int8 kernels: the arithmetic every int8 layer of this project shares, and its float reference.

Per output channel (a row of a Linear weight, a filter of a Conv2d): `scale = max|w| / 127`, `q = round(w / scale)`
in [-127, 127], so `q * scale` is the weight the layer computes with (`dequantize`). The layout follows
compressed-tensors (what llm-compressor writes and vLLM reads): `weight` int8 of the float weight's shape and
`weight_scale` float32 of shape (out, 1) (strategy `channel`, symmetric, no zero point).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

#: the largest magnitude of a symmetric int8 weight (-128 is left out, so the range is symmetric)
INT8_MAX = 127


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scales of shape (out, 1)) for a float weight of shape (out, ...).

    An all-zero channel gets scale 1 (its int8 values are 0 whatever the scale)."""
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    largest = flat.abs().amax(dim=1, keepdim=True)
    scale = torch.where(largest > 0, largest / INT8_MAX, torch.ones_like(largest))
    quantized = torch.round(flat / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return quantized.reshape(weight.shape), scale


def dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float weight an int8 `weight` with per-channel `scale` stands for."""
    return (weight.reshape(weight.shape[0], -1).float() * scale).reshape(weight.shape)


@contextlib.contextmanager
def quiet_quantized_tensors():
    """Silence torch's notice that quantized tensor types (qint8, quint8) are deprecated: the dynamic int8 kernels
    take their packed weights from one, and the reference rounds activations with one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        yield


def fake_quantize_activations(x: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """`x` rounded as PyTorch's dynamic int8 kernels round it: one asymmetric uint8 scale and zero point for the
    whole tensor, from its min and max (widened to include 0); `reduce_range` uses 7 bits (fbgemm on CPUs without
    VNNI). The float reference of a dynamic int8 layer is the float layer applied to this.

    Plain tensor arithmetic (multiplying by the float32 inverse scale and rounding half to even, as torch's
    `quantize_per_tensor` does; tested equal), so it needs no quantized tensor type: it is also what an int8 layer
    computes where torch no longer has the dynamic int8 kernel."""
    x = x.float()
    scale, zero_point = torch._choose_qparams_per_tensor(x.detach(), reduce_range)
    scale = torch.tensor(scale, dtype=torch.float32)
    quantized = torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, 0, 255)
    return (quantized - zero_point) * scale
