"""The `quantization_config` entry of config.json for a model holding int8 layers, in the compressed-tensors form.

compressed-tensors (the format llm-compressor writes and vLLM reads) describes quantization as `config_groups`,
each naming the layers it covers (`targets`) with how their `weights` and `input_activations` are quantized; the
tensors sit under the layer's own names (`<layer>.weight` int8, `<layer>.weight_scale` float32 (out, 1)), which is
how `Int8Linear` and `Int8Conv2d` store them. Here a group is one layer kind with one activation mode; targets are
the layers' names. Each group names its storage `format`: "int-quantized" (int8 weights and activations) for
dynamic layers, "naive-quantized" (int8 weights as they are) for weight-only ones; without it compressed-tensors
infers "pack-quantized" for weight-only layers and looks for `weight_packed`. With both kinds the model's format is
"mixed-precision". Plain transformers with compressed-tensors installed runs the Linear layers with the same
outputs (tests/test_quantize.py); `compressor.load` rebuilds the layers from the recipe's plan, not from this.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from compressor.ops.int8_conv2d import Int8Conv2d
from compressor.ops.int8_linear import Int8Linear

#: the config.json key compressed-tensors (and transformers' loader of it) read
QUANTIZATION_KEY = "quantization_config"
_WEIGHTS = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False}
_DYNAMIC_ACTIVATIONS = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "tensor", "dynamic": True}
#: compressed-tensors' storage format by activation mode
_FORMATS = {"dynamic": "int-quantized", "none": "naive-quantized"}
_MODE_NAMES = {"dynamic": "dynamic", "none": "weight_only"}


def int8_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's int8 layers by qualified name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, (Int8Linear, Int8Conv2d))}


def quantization_config(model: nn.Module) -> dict[str, Any]:
    """`{QUANTIZATION_KEY: {...}}` describing the model's int8 layers, or {} when it has none. A group is one kind
    of layer with one activation mode, named for it (`linear_dynamic`, `linear_weight_only`, `conv2d_weight_only`),
    so that readers of config.json, and the model card, can tell the convolutions compressed-tensors cannot run."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, module in int8_layers(model).items():
        kind = "conv2d" if isinstance(module, Int8Conv2d) else "linear"
        groups.setdefault((kind, module.activations), []).append(name)
    if not groups:
        return {}
    config_groups = {
        f"{kind}_{_MODE_NAMES[mode]}": {"targets": names, "weights": dict(_WEIGHTS),
                                        "input_activations": dict(_DYNAMIC_ACTIVATIONS) if mode == "dynamic" else None,
                                        "output_activations": None, "format": _FORMATS[mode]}
        for (kind, mode), names in sorted(groups.items())}
    formats = {group["format"] for group in config_groups.values()}
    return {QUANTIZATION_KEY: {"quant_method": "compressed-tensors",
                               "format": formats.pop() if len(formats) == 1 else "mixed-precision",
                               "quantization_status": "compressed", "config_groups": config_groups, "ignore": []}}


def int8_convolutions(quantization: dict[str, Any]) -> list[str]:
    """The int8 Conv2d layers a `quantization_config` entry describes (compressed-tensors quantizes Linear layers
    only, so plain transformers cannot run a model holding them)."""
    return [name for group, scheme in quantization.get("config_groups", {}).items() if group.startswith("conv2d_")
            for name in scheme["targets"]]
