"""Record the widths structural pruning leaves behind, and rebuild a model with exactly those widths.

Pruning is decided once, on the original weights; a saved pruned model must be rebuilt from its recipe alone
before its weights are loaded (a plain `from_pretrained` of the base config cannot do that: Torch-Pruning issue
#495). So the plan stores, for every module whose shapes changed, each changed tensor's new shape (`"384x768"`) and
each changed width attribute (`out_features: 384`, `num_attention_heads: 6`, ...), and `apply_widths` makes any
model of the same architecture take those shapes. Values are plain YAML scalars, as recipe plans require.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.errors import SourceError

#: module attributes that hold a width a forward relies on (layer sizes, head counts, head sizes)
WIDTH_ATTRIBUTES = (
    "in_features", "out_features", "in_channels", "out_channels", "groups", "num_features", "normalized_shape",
    "num_embeddings", "embedding_dim", "num_heads", "num_attention_heads", "head_dim", "attention_head_size",
    "all_head_size", "attn_dim", "embed_dim", "dim", "out_dim",
)

Widths = dict[str, dict[str, Any]]


def _is_width(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, tuple) and all(isinstance(v, int) for v in value))


def format_shape(shape: tuple[int, ...]) -> str:
    """(384, 768) -> "384x768" (a string, so the plan stays a mapping of scalars)."""
    return "x".join(str(int(size)) for size in shape)


def parse_shape(text: Any) -> tuple[int, ...]:
    if isinstance(text, int) and not isinstance(text, bool):
        return (text,)
    try:
        return tuple(int(part) for part in str(text).split("x")) if str(text) else ()
    except ValueError:
        raise SourceError(f"prune.plan: {text!r} is not a shape like 384x768; recipe.yaml was edited by hand") from None


def _persistent_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters and saved buffers (what a state dict holds for it)."""
    tensors = {name: p for name, p in module._parameters.items() if p is not None}
    skipped = getattr(module, "_non_persistent_buffers_set", set())
    tensors.update({name: b for name, b in module._buffers.items() if b is not None and name not in skipped})
    return tensors


def snapshot_widths(model: nn.Module) -> dict[str, dict[str, tuple]]:
    """Every module's tensor shapes and width attributes, by qualified module name."""
    found: dict[str, dict[str, tuple]] = {}
    for name, module in model.named_modules():
        entry = {key: ("tensor", tuple(tensor.shape)) for key, tensor in _persistent_tensors(module).items()}
        for attribute in WIDTH_ATTRIBUTES:
            value = module.__dict__.get(attribute)
            if _is_width(value):
                entry[attribute] = ("attribute", value)
        found[name] = entry
    return found


def changed_widths(before: dict[str, dict[str, tuple]], after: dict[str, dict[str, tuple]]) -> Widths:
    """The plan: per module, the tensors and width attributes whose values differ from `before`."""
    plan: Widths = {}
    for name, entries in after.items():
        old = before.get(name, {})
        changed = {}
        for key, (kind, value) in entries.items():
            if old.get(key) == (kind, value):
                continue
            if kind == "tensor" or isinstance(value, tuple):
                changed[key] = format_shape(value)
            else:
                changed[key] = int(value)
        if changed:
            plan[name] = changed
    return plan


def apply_widths(model: nn.Module, plan: Widths) -> None:
    """Give `model` the shapes and width attributes of `plan` (a no-op where they already match).

    Tensors that change shape are replaced by uninitialised ones: the saved weights are loaded afterwards.
    """
    for name, settings in plan.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SourceError(f"prune.plan names module {name!r}, which this model does not have; the recipe was "
                              "made for another architecture") from None
        for key, value in settings.items():
            _apply_one(module, name, key, value)


def _apply_one(module: nn.Module, name: str, key: str, value: Any) -> None:
    tensors = _persistent_tensors(module)
    if key in tensors:
        shape = parse_shape(value)
        current = tensors[key]
        if tuple(current.shape) == shape:
            return
        replacement = torch.empty(shape, dtype=current.dtype, device=current.device)
        if key in module._parameters:
            module._parameters[key] = nn.Parameter(replacement, requires_grad=current.requires_grad)
        else:
            module._buffers[key] = replacement
        return
    if key not in WIDTH_ATTRIBUTES or key not in module.__dict__:
        raise SourceError(f"prune.plan: {name}.{key} is neither a tensor nor a width attribute of "
                          f"{type(module).__name__}; the recipe was made for another architecture")
    setattr(module, key, parse_shape(value) if isinstance(module.__dict__[key], tuple) else int(value))
