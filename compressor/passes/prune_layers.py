"""Pruning functions for layers Torch-Pruning does not know: Swin's patch merging, and frozen batch norms.

Frozen batch norms (transformers' `DetrFrozenBatchNorm2d` and its copies in the other DETR families, timm's and
torchvision's `FrozenBatchNorm2d`: DETR swaps every BatchNorm2d of its backbone for one) keep their statistics and
affine terms as buffers, so the trace sees only arithmetic and would leave them at the old width. Each is pruned
like a BatchNorm2d: one channel in, the same channel out, its four buffers sliced.

Swin's patch merging (transformers' `SwinPatchMerging`, timm's `PatchMerging`) gathers the 2×2 neighbours of
each patch and concatenates them into 4·C channels: channel `c` of the input appears at `c`, `C + c`, `2C + c`
and `3C + c` of the merged LayerNorm and linear reduction. The trace misses that layout, and the pruner from
Torch-Pruning's own Swin example reads C from a `dim` attribute that goes stale after the first pruning step —
the shape errors of its issue #490 at ratios below 0.5. Here C is read from the LayerNorm's current width, and
while the graph is traced each patch merging runs as one opaque autograd step (`opaque_layers`), so the trace
sees a single layer from C stream channels to its outputs instead of slices and a concatenation it maps wrongly.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn


def _merging_classes() -> list[type]:
    classes = []
    try:
        from transformers.models.swin.modeling_swin import SwinPatchMerging
        classes.append(SwinPatchMerging)
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    import sys

    if "timm" in sys.modules:  # a timm model can only exist once timm is imported
        from timm.models.swin_transformer import PatchMerging
        classes.append(PatchMerging)
    return classes


def _sync_widths(layer: nn.Module) -> nn.Module:
    """timm's PatchMerging keeps `dim` and `out_dim` (transformers' keeps neither): make them true again."""
    for attribute, value in (("dim", layer.norm.normalized_shape[0] // 4), ("out_dim", layer.reduction.out_features)):
        if attribute in layer.__dict__:
            setattr(layer, attribute, value)
    return layer


#: the buffers of a frozen batch norm, one value per channel
FROZEN_NORM_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def _frozen_norm_classes(model: nn.Module) -> set[type]:
    """The frozen batch norm classes in `model`: named `...FrozenBatchNorm2d`, holding the four buffers."""
    return {type(module) for module in model.modules()
            if type(module).__name__.endswith("FrozenBatchNorm2d")
            and all(isinstance(module._buffers.get(name), torch.Tensor) for name in FROZEN_NORM_BUFFERS)}


def customized_pruners(model: nn.Module) -> dict[type, object]:
    """{layer class: pruning function} for Torch-Pruning's `customized_pruners`, for the layers of `model`."""
    import torch_pruning as tp

    class FrozenNormPruner(tp.BasePruningFunc):
        """A frozen batch norm: its channels in are its channels out (as Torch-Pruning's BatchNorm pruner)."""

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            removed = set(int(i) for i in idxs)
            keep = torch.tensor([c for c in range(self.get_out_channels(layer)) if c not in removed])
            for name in FROZEN_NORM_BUFFERS:
                layer._buffers[name] = layer._buffers[name].index_select(0, keep)
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer._buffers["weight"].shape[0]

        get_in_channels = get_out_channels

    class PatchMergingPruner(tp.BasePruningFunc):
        """Out channels: the reduction's outputs. In channels: each input channel's four merged copies."""

        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            tp.prune_linear_out_channels(layer.reduction, list(idxs))
            return _sync_widths(layer)

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            width = self.get_in_channels(layer)
            merged = [copy * width + int(i) for copy in range(4) for i in idxs]
            tp.prune_linear_in_channels(layer.reduction, merged)
            tp.prune_layernorm_out_channels(layer.norm, merged)
            return _sync_widths(layer)

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.reduction.out_features

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.norm.normalized_shape[0] // 4

    merging, frozen_norm = PatchMergingPruner(), FrozenNormPruner()
    return {**{cls: merging for cls in _merging_classes()}, **{cls: frozen_norm for cls in _frozen_norm_classes(model)}}


class _OpaqueStep(torch.autograd.Function):
    """Run `forward` as one autograd node whose inputs are the layer input and the layer's parameters.

    Gradients (for Taylor importance) are recomputed through the real forward in `backward`.
    """

    @staticmethod
    def forward(ctx, forward, inputs, *parameters):
        ctx.forward = forward
        ctx.save_for_backward(inputs, *parameters)
        with torch.no_grad():
            return forward(inputs)

    @staticmethod
    def backward(ctx, grad_output):
        inputs, *parameters = ctx.saved_tensors
        with torch.enable_grad():
            inputs = inputs.detach().requires_grad_()
            outputs = ctx.forward(inputs)
            grads = torch.autograd.grad(outputs, [inputs, *parameters], grad_output, allow_unused=True)
        return (None, *grads)


@contextlib.contextmanager
def opaque_layers(model: nn.Module) -> Iterator[None]:
    """While active, every layer with a customized pruner runs as one opaque autograd step (see module doc)."""
    classes = tuple(_merging_classes())
    patched = [module for module in model.modules() if classes and isinstance(module, classes)]
    for module in patched:
        original = module.forward

        def opaque(inputs, *args, _original=original, _module=module, **kwargs):
            return _OpaqueStep.apply(lambda x: _original(x, *args, **kwargs), inputs, *_module.parameters())

        module.forward = opaque
    try:
        yield
    finally:
        for module in patched:
            del module.forward
