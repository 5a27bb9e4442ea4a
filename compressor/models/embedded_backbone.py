"""A detector's backbone is made of sites, described by the same family adapter as the standalone model.

DETR-family models in transformers hold their backbone at `<model>.backbone.model`: an AutoBackbone
(`ResNetBackbone`, `SwinBackbone`) or, with `use_timm_backbone`, a timm features-only ResNet (`FeatureListNet`).
Rather than describe those blocks a second time, the detector adapter takes the standalone family adapter of the
backbone module (`HFResNetAdapter`, `HFSwinAdapter`, `TimmResNetAdapter`) and re-exposes its attention, FFN and
block sites under the detector's qualified names, their stacks prefixed (`stage0` becomes `backbone.stage0`). So
`prune` and `tied_weights` reach a backbone block exactly as in a standalone ResNet or Swin, and an attention
kernel for a backbone site is installed by the backbone's own adapter (which knows its attention implementation).
Token passes choose from `ModelAdapter.token_stacks()`, which lists the backbone's token stack (a Swin backbone's
blocks) before the detector's own; `relative()` maps a site back to the backbone's own names for whatever the
backbone's adapter must do itself.

The detector adapter's own `attention_sites()`, `ffn_sites()` and `blocks()` stay its transformer's; the passes
choose from `all_attention_sites()` etc. (`compressor.models.base`), which put the backbone's first (it runs
first). `targets: [auto]` never reaches into an embedded backbone (`in_auto_scope`): a recipe written for the
transformer (`act`, `detr-pe`, `token-clip`, `prune`) keeps its meaning and its figures on a detector; backbone
sites are chosen by name, e.g. `re:model\\.backbone\\.`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from compressor.models.base import AttentionKernel, AttentionSite, BlockSite, FFNSite, ModelAdapter, TokenStack
from compressor.models.hf_resnet import HFResNetAdapter
from compressor.models.hf_swin import HFSwinAdapter
from compressor.models.timm_resnet import TimmResNetAdapter

#: the families a DETR-family detector's backbone can be (transformers' AutoBackbone ResNet and Swin, timm's
#: features-only ResNet), named here rather than taken from the registry, which imports the detectors
BACKBONE_FAMILIES: tuple[type[ModelAdapter], ...] = (HFResNetAdapter, HFSwinAdapter, TimmResNetAdapter)

#: what the stacks of an embedded backbone are prefixed with ("backbone.stage0")
BACKBONE_STACK = "backbone"

Site = TypeVar("Site", AttentionSite, FFNSite, BlockSite)

#: the fields of each site kind that hold a module name (relative to the model root)
_NAME_FIELDS = {
    AttentionSite: ("name", "query", "key", "value", "output"),
    FFNSite: ("name", "fc1", "fc2", "activation"),
    BlockSite: ("name", "attention", "ffn", "convs", "norms"),
}


def _renamed(site: Site, rename) -> Site:
    changes = {}
    for field in _NAME_FIELDS[type(site)]:
        value = getattr(site, field)
        if isinstance(value, tuple):
            changes[field] = tuple(rename(v) for v in value)
        elif value is not None:
            changes[field] = rename(value)
    return dataclasses.replace(site, **changes)


@dataclass(frozen=True)
class EmbeddedBackbone:
    """The backbone module at `prefix` in a detector, and the family adapter describing it on its own."""

    prefix: str
    adapter: ModelAdapter

    def owns(self, name: str) -> bool:
        """True for the backbone module itself and every module inside it."""
        return name == self.prefix or name.startswith(self.prefix + ".")

    def qualified(self, site: Site) -> Site:
        """`site` of the standalone backbone as a site of the detector (names and stack prefixed)."""
        site = _renamed(site, lambda name: f"{self.prefix}.{name}")
        return dataclasses.replace(site, stack=f"{BACKBONE_STACK}.{site.stack}")

    def relative(self, site: Site) -> Site:
        """A detector site inside the backbone as the standalone backbone's adapter names it."""
        site = _renamed(site, lambda name: name[len(self.prefix) + 1:])
        return dataclasses.replace(site, stack=site.stack[len(BACKBONE_STACK) + 1:])

    def attention_sites(self) -> list[AttentionSite]:
        return [self.qualified(site) for site in self.adapter.attention_sites()]

    def token_stacks(self, inputs: dict[str, torch.Tensor]) -> list[TokenStack]:
        """The backbone's own token stacks (a Swin backbone's blocks, all four stages) under the detector's names,
        laid out for the detector's input `inputs`."""
        return [dataclasses.replace(stack, blocks=tuple(self.qualified(block) for block in stack.blocks))
                for stack in self.adapter.token_stacks(inputs)]

    def ffn_sites(self) -> list[FFNSite]:
        return [self.qualified(site) for site in self.adapter.ffn_sites()]

    def blocks(self) -> list[BlockSite]:
        return [self.qualified(site) for site in self.adapter.blocks()]


def find_embedded_backbone(model: nn.Module) -> EmbeddedBackbone | None:
    """The first `<...>.backbone.model` of `model` that a family adapter describes, or None.

    DETR-family detectors wrap their backbone in a module named `backbone` whose `model` is the network itself
    (transformers' DetrConvEncoder, ConditionalDetrConvEncoder, ...).
    """
    for name, module in model.named_modules():
        inner = getattr(module, "model", None) if name.rsplit(".", 1)[-1] == "backbone" else None
        if not isinstance(inner, nn.Module):
            continue
        for cls in BACKBONE_FAMILIES:
            if cls.handles(inner):
                return EmbeddedBackbone(prefix=f"{name}.model", adapter=cls(inner))
    return None


class EmbeddedBackboneSites:
    """For detector adapters (mixed in before their family base): the backbone found at `<...>.backbone.model`,
    and attention kernels for its sites installed by the backbone's own adapter. The sites themselves reach the
    passes through `ModelAdapter.all_attention_sites()` and its siblings."""

    model: nn.Module

    def embedded_backbone(self) -> EmbeddedBackbone | None:
        """Found anew on every call: passes replace modules, and a scratch copy is another model."""
        return find_embedded_backbone(self.model)

    def install_attention_kernel(self, site: AttentionSite, kernel: AttentionKernel) -> None:
        backbone = self.embedded_backbone()
        if backbone is not None and backbone.owns(site.name):
            backbone.adapter.install_attention_kernel(backbone.relative(site), kernel)
            return
        super().install_attention_kernel(site, kernel)
