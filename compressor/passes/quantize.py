"""int8 quantization: Linear (and Conv2d) weights to int8 with one scale per output channel, weight-only or with
dynamic int8 activations (`compressor.ops.int8_linear` says which kernels and why).

A rewrite, like the other passes: the plan names each layer quantized and how, so `compressor.load` replaces the
same layers (of the shapes earlier passes left, e.g. pruned) before loading the int8 tensors and scales. The
quantization itself is the rewrite (deterministic, from the weights the layer holds); on reload the saved int8
tensors replace what it computed from the freshly built weights. `bits: 32` leaves the model unchanged.

After `tied_weights`, a tied weight is quantized once, in the layer that owns it; the tied layers that borrow it are
pointed at the int8 owner and compute with its dequantized weight, so the tie is kept and stored once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.errors import RecipeError
from compressor.models.base import ModelAdapter
from compressor.ops.int8_conv2d import Int8Conv2d
from compressor.ops.int8_format import int8_layers
from compressor.ops.int8_linear import ACTIVATION_MODES, Int8Linear
from compressor.ops.tied_layers import BorrowedWeight, TiedConv2d, TiedLinear, TiedQKV
from compressor.passes.base import Param, Pass, PassContext
from compressor.passes.prune import ModuleSite
from compressor.passes.tied_weights import replace_module

LAYER_KINDS = {"linear": nn.Linear, "conv2d": nn.Conv2d}
_TIED = (TiedLinear, TiedConv2d, TiedQKV)


def _borrowed_weights(model: nn.Module) -> list[BorrowedWeight]:
    """Every reference a tied layer holds to another layer's weight."""
    return [value for module in model.modules() for value in vars(module).values() if isinstance(value, BorrowedWeight)]


def _retarget_ties(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Tied layers that read `old`'s weight read `new`'s (its int8 form): quantized once, the tie is kept."""
    for borrowed in _borrowed_weights(model):
        if borrowed.owner is old:
            borrowed.owner = new


#: Hugging Face image transformers cast their pixel values to the dtype of this layer's weight
_DTYPE_READ_BY_PARENT = "patch_embeddings.projection"


def why_not_quantizable(name: str, module: nn.Module, kinds: list[str]) -> str | None:
    """Why this weight layer is left float (None: it is quantized)."""
    if isinstance(module, (Int8Linear, Int8Conv2d)):
        return "already int8 (a recipe quantizes once)"
    if isinstance(module, TiedQKV):
        return "a tied fused qkv projection (tied_weights): its two square matrices stay float"
    if isinstance(module, _TIED):
        return (f"borrows {module.source!r} (tied_weights): it computes with its owner's weight, int8 where the "
                "owner is quantized, stored once")
    kind = next((name for name, cls in LAYER_KINDS.items() if type(module) is cls), None)
    if kind is None:
        return (f"a {type(module).__name__}, a subclass of a Linear/Conv2d whose parent may read its float weight "
                "directly")
    if kind not in kinds:
        return f"a {kind} layer, and quantize.layers is {kinds}"
    if name.endswith(_DTYPE_READ_BY_PARENT):
        return "the embeddings cast pixel values to this layer's weight dtype, which must stay float"
    if kind == "conv2d" and module.padding_mode != "zeros":
        return f"padding_mode {module.padding_mode!r} (only zero-padded convolutions are quantized)"
    if not module.weight.is_floating_point():
        return f"its weight is {module.weight.dtype}, not float"
    return None


def _is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d, Int8Linear, Int8Conv2d, *_TIED))


def _tensor_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


class QuantizePass(Pass):
    name = "quantize"
    summary = ("int8 weights per output channel for Linear (and Conv2d) layers, weight-only or with dynamic int8 "
               "activations (oneDNN kernels); model.safetensors about ×0.26.")
    site_kind = "Linear/Conv2d layer"
    cannot_follow = {"quantize": "the layers are int8 already: a recipe quantizes once; remove one quantize"}
    params = {
        "bits": Param("int", 8, "Weight bits: 8 stores int8 weights with one float32 scale per output channel; 32 "
                      "keeps every layer float (the original model).", choices=(8, 32)),
        "activations": Param("str", "dynamic", "Linear inputs: `dynamic` rounds each input tensor to int8 at run "
                             "time (one scale and zero point per tensor, as PyTorch's dynamic quantization; the "
                             "fast int8 kernel), `none` keeps them float (weight-only: smaller, not faster). "
                             "Convolutions are always weight-only.", choices=ACTIVATION_MODES),
        "layers": Param("list[str]", list(LAYER_KINDS), "Which layer types to quantize among the targets: "
                        "`linear`, `conv2d`.", choices=tuple(LAYER_KINDS)),
    }

    def __init__(self) -> None:
        self.left_float: dict[str, str] = {}
        self.bytes: tuple[int, int] | None = None

    # --- sites -------------------------------------------------------------------------------------------------
    def candidate_sites(self, adapter: ModelAdapter) -> list[ModuleSite]:
        """Every layer with a weight matrix or filter bank (Linear, Conv2d, their tied and int8 forms)."""
        return [ModuleSite(name) for name, module in adapter.model.named_modules() if _is_weight_layer(module)]

    def default_sites(self, adapter: ModelAdapter, candidates: list[ModuleSite]) -> list[ModuleSite]:
        return candidates

    def _split(self, adapter: ModelAdapter, sites: list[ModuleSite],
               params: dict[str, Any]) -> tuple[list[ModuleSite], dict[str, str]]:
        """(sites to quantize, {site left float: why})."""
        chosen, left = [], {}
        for site in sites:
            reason = why_not_quantizable(site.name, adapter.module(site.name), params["layers"])
            if reason is None:
                chosen.append(site)
            else:
                left[site.name] = reason
        return chosen, left

    def check_settings(self, adapter: ModelAdapter, sites: list[ModuleSite], params: dict[str, Any]) -> None:
        if params["bits"] == 32:
            return
        chosen, left = self._split(adapter, sites, params)
        if not chosen:
            name, reason = next(iter(left.items()))
            raise RecipeError(f"quantize: none of the {len(sites)} targeted layers can be quantized (e.g. {name}: "
                              f"{reason}); target other layers or change quantize.layers")

    # --- the two steps -----------------------------------------------------------------------------------------
    def plan(self, adapter: ModelAdapter, sites: list[ModuleSite], params: dict[str, Any],
             context: PassContext) -> dict[str, dict[str, Any]]:
        """Each layer quantized, with its kind and activation mode; the layers left float, with why, go to the
        report."""
        if params["bits"] == 32:
            self.left_float = {}
            return {}
        chosen, self.left_float = self._split(adapter, sites, params)
        plan = {}
        for site in chosen:
            kind = "linear" if type(adapter.module(site.name)) is nn.Linear else "conv2d"
            plan[site.name] = {"layer": kind, "activations": params["activations"] if kind == "linear" else "none"}
        return plan

    def rewrite(self, adapter: ModelAdapter, sites: list[ModuleSite], params: dict[str, Any],
                plan: dict[str, dict[str, Any]], seed: int) -> None:
        """Replace each planned layer by its int8 form, quantized from the weights it holds now."""
        before = _tensor_bytes(adapter.model)
        for name, settings in plan.items():
            module = adapter.module(name)
            expected = LAYER_KINDS.get(settings.get("layer"))
            if expected is None or type(module) is not expected or settings.get("activations") not in ACTIVATION_MODES:
                raise RecipeError(f"quantize.plan: {name} is a {type(module).__name__}, not the {settings.get('layer')}"
                                  " layer the plan quantizes; the plan comes from another model")
            with torch.no_grad():
                new = (Int8Linear.from_float(module, settings["activations"]) if expected is nn.Linear
                       else Int8Conv2d(module))
            replace_module(adapter.model, name, new)
            _retarget_ties(adapter.model, module, new)
        self.bytes = (before, _tensor_bytes(adapter.model))

    # --- report ------------------------------------------------------------------------------------------------
    def statistics(self, adapter: ModelAdapter, sites: list[ModuleSite]) -> dict[str, Any]:
        layers = int8_layers(adapter.model)
        counts: dict[str, int] = {}
        for module in layers.values():
            label = ("Linear, dynamic int8 activations" if isinstance(module, Int8Linear) and
                     module.activations == "dynamic" else
                     "Linear, weight-only" if isinstance(module, Int8Linear) else "Conv2d, weight-only")
            counts[label] = counts.get(label, 0) + 1
        summary: dict[str, Any] = {"bits": 8 if layers else 32,
                                   "quantized layers": ", ".join(f"{n} {label}" for label, n in counts.items())
                                   or "none"}
        if self.bytes is not None:
            before, after = self.bytes
            summary["weights in model.safetensors"] = (f"{before / 1e6:.2f} MB → {after / 1e6:.2f} MB "
                                                       f"(×{after / before:.3f})" if before else "-")
        if self.left_float:
            shown = "; ".join(f"{name}: {reason}" for name, reason in list(self.left_float.items())[:3])
            more = len(self.left_float) - 3
            summary["left float"] = f"{len(self.left_float)} layers ({shown}{f'; +{more} more' if more > 0 else ''})"
        return {"quantized": sorted(layers), "left_float": self.left_float,
                "bytes": {"before": self.bytes[0], "after": self.bytes[1]} if self.bytes else None,
                "summary": summary}
