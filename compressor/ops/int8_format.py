"""The `quantization_config` entry of config.json for a model holding int8 layers, in the compressed-tensors form.

compressed-tensors (the format llm-compressor writes and vLLM reads) describes quantization as `config_groups`,
each naming the layers it covers (`targets`) with how their `weights` and `input_activations` are quantized; the
tensors sit under the layer's own names (`<layer>.weight` int8, `<layer>.weight_scale` float32 (out, 1)), which is
how `Int8Linear` and `Int8Conv2d` store them. Here a group is one activation mode; targets are the layers' names.
It documents the file for other tools; `compressor.load` rebuilds the layers from the recipe's plan, not from this.
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


def int8_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's int8 layers by qualified name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, (Int8Linear, Int8Conv2d))}


def quantization_config(model: nn.Module) -> dict[str, Any]:
    """`{QUANTIZATION_KEY: {...}}` describing the model's int8 layers, or {} when it has none."""
    groups: dict[str, list[str]] = {}
    for name, module in int8_layers(model).items():
        groups.setdefault(module.activations, []).append(name)
    if not groups:
        return {}
    config_groups = {
        f"group_{index}": {"targets": names, "weights": dict(_WEIGHTS),
                           "input_activations": dict(_DYNAMIC_ACTIVATIONS) if mode == "dynamic" else None,
                           "output_activations": None}
        for index, (mode, names) in enumerate(sorted(groups.items()))}
    return {QUANTIZATION_KEY: {"quant_method": "compressed-tensors", "format": "int-quantized",
                               "quantization_status": "compressed", "config_groups": config_groups, "ignore": []}}
