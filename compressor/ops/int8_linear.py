"""A Linear layer with int8 weights (one scale per output channel), weight-only or with dynamic int8 activations.

Kernels, measured on this machine's CPU (AVX-512 VNNI, AMX) on a ViT-B/16 MLP matmul at batch 8, one thread
(docs/benchmarks.md, "int8 quantization"): PyTorch's dynamic int8 linear through oneDNN (`quantized::linear_dynamic`
on weights packed by the `onednn` engine) ran at ×0.17 of float32, fbgemm/x86 at ×0.40, torchao 0.18's
Int8DynamicActivationInt8WeightConfig at ×0.58, `torch._int_mm` with per-token activation scales at ×0.72,
torchao's int8 weight-only at ×1.07 and `aten._weight_int8pack_mm` (float32 input) at ×60. So dynamic mode uses
oneDNN where torch has it (the engine's default otherwise), and weight-only mode multiplies by the dequantized
weight (file size and memory shrink; speed stays that of float). A torch without the dynamic kernel (torch.ao's
quantized ops are deprecated upstream) runs dynamic layers as their float reference, so saved models keep loading.

The int8 kernel runs at inference (`eval()`); in training mode the layer computes with the dequantized weight in
float, so gradients reach its input and bias (the int8 weight stays fixed): a distill step after quantization
trains the float parameters around it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from compressor.ops.int8_weights import (dequantize, fake_quantize_activations, quantize_per_channel,
                                         quiet_quantized_tensors)

#: how activations are handled: `dynamic` quantizes each input tensor to int8 at run time, `none` keeps them float
ACTIVATION_MODES = ("dynamic", "none")


@functools.cache
def dynamic_kernel_available() -> bool:
    """Whether this torch still has its dynamic int8 linear (torch.ao's quantized ops, deprecated upstream); asked
    once, not on every forward."""
    try:
        return bool(torch.ops.quantized.linear_dynamic and torch.ops.quantized.linear_prepack)
    except (AttributeError, RuntimeError):
        return False


def _packing_engine() -> str:
    """The quantized engine whose dynamic linear is fastest here: oneDNN (VNNI/AMX int8) when torch has it."""
    engines = torch.backends.quantized.supported_engines
    return "onednn" if "onednn" in engines else torch.backends.quantized.engine


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W = `weight` (int8) × `weight_scale` (per output row); `activations` as ACTIVATION_MODES.

    `weight` is a frozen parameter (so parameter counts are those of the float layer), `weight_scale` a buffer.
    With dynamic activations, `uncounted_flops` holds the last forward's multiply-adds (FlopCounterMode does not
    see the quantized kernel)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activations: str = "dynamic"):
        super().__init__()
        if activations not in ACTIVATION_MODES:
            raise ValueError(f"Int8Linear activations must be one of {', '.join(ACTIVATION_MODES)}, got {activations!r}")
        self.in_features, self.out_features, self.activations = in_features, out_features, activations
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8), requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features, 1))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.engine = _packing_engine()
        self.uncounted_flops = 0
        self._packed: tuple[tuple, object] | None = None

    @classmethod
    def from_float(cls, linear: nn.Linear, activations: str = "dynamic") -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, activations)
        weight, scale = quantize_per_channel(linear.weight)
        layer.weight.data.copy_(weight)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        layer.train(linear.training)
        return layer

    @property
    def reduce_range(self) -> bool:
        """7-bit activations where the engine needs them to avoid overflow (fbgemm/x86 without VNNI)."""
        return self.engine != "onednn"

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale)

    def _packed_weight(self):
        """The engine's packed weight, packed again only when the weight, scales or bias changed (loading a state
        dict, `.to()`)."""
        sources = [self.weight, self.weight_scale] + ([self.bias] if self.bias is not None else [])
        key = tuple((t._version, t.data_ptr()) for t in sources)
        if self._packed is None or self._packed[0] != key:
            scale = self.weight_scale.reshape(-1).double()
            with quiet_quantized_tensors():
                quantized = torch._make_per_channel_quantized_tensor(self.weight.detach(), scale,
                                                                      torch.zeros_like(scale, dtype=torch.long), 0)
            bias = self.bias.detach() if self.bias is not None else None
            previous = torch.backends.quantized.engine
            torch.backends.quantized.engine = self.engine
            try:
                packed = torch.ops.quantized.linear_prepack(quantized, bias)
            finally:
                torch.backends.quantized.engine = previous
            self._packed = (key, packed)
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.uncounted_flops = 0
        if self.activations == "none" or self.training or x.dtype != torch.float32 or x.numel() == 0:
            return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)
        rows = x.numel() // self.in_features
        self.uncounted_flops = 2 * rows * self.in_features * self.out_features
        if not dynamic_kernel_available():  # the same arithmetic in float: slower, same outputs up to rounding
            return self.reference(x)
        return torch.ops.quantized.linear_dynamic(x.contiguous(), self._packed_weight(), self.reduce_range)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """What `forward` computes, in float: the dequantized weight applied to the activations rounded as the
        kernel rounds them (dynamic), or to `x` itself (weight-only)."""
        if self.activations == "dynamic":
            x = fake_quantize_activations(x, self.reduce_range)
        return F.linear(x, self.dequantized_weight(), self.bias)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None  # a packed weight is an engine object: a copy packs its own
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight=int8 per channel, activations={self.activations}")
