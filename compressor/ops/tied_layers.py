"""Layers that use another layer's weight, or its adjoint, instead of their own (tied row/column weights).

Koyun & Töreyin, "Do deep neural networks utilize the weight space efficiently?": one matrix W serves a layer and
its transpose serves the paired layer. A tied layer keeps its own bias but holds no weight parameter: it reads the
owner's parameter at every forward through a `BorrowedWeight`, which is a plain reference (not a submodule), so the
parameter appears once in `parameters()`, in `state_dict()` and in `model.safetensors`, follows `.to()` / `.half()`
of the owner, and a deep copy of the model keeps the tie (the owner is copied once and the reference follows).

A derived weight (a transpose, a flipped kernel, TiedQKV's fused matrix) costs a copy per forward; at inference it is
built once and reused while its source parameters are unchanged (`DerivedWeight`). Where gradients may flow (training
mode, or autograd on for parameters that need it) it is built every forward, so gradients reach the owner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def adjoint(weight: torch.Tensor) -> torch.Tensor:
    """The weight of the adjoint layer: Wᵀ for a Linear weight (out, in); for a Conv2d weight (out, in, kh, kw) the
    channels swapped and the kernel flipped, which is the transposed convolution of a stride-1 conv whose padding
    keeps the size (a 1×1 kernel is unchanged by the flip, so it is the plain channel transpose).

    `adjoint(adjoint(W)) == W`, and it is a permutation of entries, so it preserves norms.
    """
    if weight.dim() == 2:
        return weight.t()
    if weight.dim() == 4:
        return weight.transpose(0, 1).flip(-1, -2)
    raise ValueError(f"adjoint: expected a Linear or Conv2d weight, got shape {tuple(weight.shape)}")


def adjoint_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `adjoint` gives for a weight of `shape`."""
    return (shape[1], shape[0], *shape[2:])


class DerivedWeight:
    """The last weight derived from some parameters, reused while none of them changed.

    A parameter changed when its version counter moved (any in-place update: an optimizer step, `copy_`, loading a
    state dict) or its storage moved (`.to()`, `.data = ...`).
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None

    def __call__(self, layer: nn.Module, sources: tuple[torch.Tensor, ...], build) -> torch.Tensor:
        if layer.training or (torch.is_grad_enabled() and any(p.requires_grad for p in sources)):
            return build()  # gradients must reach the sources
        key = tuple((p._version, p.data_ptr(), p.dtype, p.device, p.shape) for p in sources)
        if key != self.key:
            self.key, self.value = key, build()
        return self.value

    def __deepcopy__(self, memo: dict) -> DerivedWeight:
        return DerivedWeight()  # a copy's parameters live elsewhere: it derives its own


class BorrowedWeight:
    """A reference to `owner`'s parameter `name`, read at call time, transposed (adjoint) when `transposed`.

    Deliberately not an nn.Module: registering the owner as a child would put the parameter in the state dict twice.
    """

    def __init__(self, owner: nn.Module, name: str, transposed: bool):
        self.owner, self.name, self.transposed = owner, name, transposed
        self.derived = DerivedWeight()

    def _stored(self) -> tuple[torch.Tensor, ...]:
        """The owner's tensors the weight comes from: the parameter, and its scales when the owner is int8."""
        weight = getattr(self.owner, self.name)
        return (weight,) if weight.is_floating_point() else (weight, self.owner.weight_scale)

    def __call__(self) -> torch.Tensor:
        weight = getattr(self.owner, self.name)
        if not weight.is_floating_point():  # an int8 owner (quantize): the tie reads the weight it stands for
            weight = self.owner.dequantized_weight()
        return adjoint(weight) if self.transposed else weight

    def for_forward(self, layer: nn.Module) -> torch.Tensor:
        """The weight for `layer`'s forward: a transpose (or an int8 owner's dequantized weight) is reused at
        inference while the owner's is unchanged."""
        stored = self._stored()
        if not self.transposed and len(stored) == 1:
            return stored[0]
        return self.derived(layer, stored, self)

    def __repr__(self) -> str:
        return f"{'T(' if self.transposed else ''}{type(self.owner).__name__}.{self.name}{')' if self.transposed else ''}"


class TiedLinear(nn.Module):
    """A Linear layer whose weight is borrowed (`source()`), with its own bias."""

    def __init__(self, source: BorrowedWeight, bias: torch.Tensor | None):
        super().__init__()
        self.__dict__["source"] = source  # a plain attribute: see BorrowedWeight
        weight = source()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        """The borrowed weight, for code that reads `layer.weight` (dtype checks, FLOP counting)."""
        return self.source()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.source.for_forward(self), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.source!r}"


class TiedConv2d(nn.Module):
    """A Conv2d whose weight is borrowed, keeping the replaced conv's stride, padding, dilation and own bias."""

    def __init__(self, source: BorrowedWeight, like: nn.Conv2d):
        super().__init__()
        if like.groups != 1 and source.transposed:
            raise ValueError("a grouped convolution has no adjoint of the same form; it cannot borrow a transpose")
        if like.padding_mode != "zeros":
            raise ValueError(f"only zero-padded convolutions can be tied, got padding_mode={like.padding_mode!r}")
        self.__dict__["source"] = source
        self.in_channels, self.out_channels = like.in_channels, like.out_channels
        self.kernel_size, self.stride, self.padding = like.kernel_size, like.stride, like.padding
        self.dilation, self.groups = like.dilation, like.groups
        self.bias = nn.Parameter(like.bias.detach().clone()) if like.bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        return self.source()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.source.for_forward(self), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, weight={self.source!r}")


class TiedQKV(nn.Module):
    """A fused qkv projection (timm) with Q = W_q x, K = W_kv x, V = W_kvᵀ x: two square matrices instead of three.

    Owns `weight_q` (the output projection borrows its transpose) and `weight_kv`, and the fused bias. `weight` is
    the equivalent (3·dim, dim) matrix, so code that reads it still sees a Linear.
    """

    def __init__(self, weight_q: torch.Tensor, weight_kv: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight_q.shape != weight_kv.shape or weight_q.shape[0] != weight_q.shape[1]:
            raise ValueError(f"TiedQKV needs two equal square matrices, got {tuple(weight_q.shape)} and "
                             f"{tuple(weight_kv.shape)}")
        self.weight_q = nn.Parameter(weight_q.detach().clone())
        self.weight_kv = nn.Parameter(weight_kv.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.in_features = int(weight_q.shape[1])
        self.out_features = 3 * int(weight_q.shape[0])
        self.derived = DerivedWeight()

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.weight_q, self.weight_kv, self.weight_kv.t()], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.derived(self, (self.weight_q, self.weight_kv), lambda: self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features} (Q=W_q, K=W_kv, V=W_kvᵀ)"
