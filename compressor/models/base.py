"""What every family adapter tells the passes about a model.

A pass never looks inside a model directly: it asks the model's adapter where the attention, feed-forward and
block modules are, what the token layout is, what an example input looks like, and how to route an attention
module's softmax(QKᵀ)V through a replacement kernel. Supporting a new family means writing one adapter file; an
adapter knows nothing of the passes. The contracts the kernels implement (`AttentionKernel`, `TokenReducer`) live
with the kernels in `compressor.ops`, which never imports the adapters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from compressor.ops.attention_kernel import AttentionKernel

if TYPE_CHECKING:
    from compressor.models.patches import ForwardPatch


@dataclass(frozen=True)
class AttentionSite:
    """One attention module.

    `name` is the module's qualified name in the model (what recipe `targets` match). `stack` names the stack of
    blocks it belongs to ("encoder", "decoder", "stage2", ...), `layer` its index in the whole model's sequence of
    attention sites of that stack. `kind` is "self" or "cross"; `scope` is "global" (every token sees every token)
    or "window" (Swin's local windows). Projection names are relative to the model root; a fused QKV projection
    (timm) has the same name in `query`, `key` and `value`.
    """

    name: str
    stack: str
    layer: int
    kind: str
    scope: str
    num_heads: int
    head_dim: int
    query: str
    key: str
    value: str
    output: str

    @property
    def fused_qkv(self) -> bool:
        return self.query == self.key == self.value


@dataclass(frozen=True)
class FFNSite:
    """One feed-forward (MLP) module: `fc1` expands, `fc2` projects back, `activation` sits between."""

    name: str
    stack: str
    layer: int
    fc1: str
    fc2: str
    activation: str


@dataclass(frozen=True)
class BlockSite:
    """One residual block: a transformer layer or a ResNet basic/bottleneck block."""

    name: str
    stack: str
    layer: int
    kind: str  # "transformer", "basic" or "bottleneck"
    attention: str | None = None
    ffn: str | None = None
    convs: tuple[str, ...] = ()
    #: the normalisation after each of `convs`, same order (empty where an adapter does not list them)
    norms: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenLayout:
    """How tokens are laid out in the sequence the attention layers see (for an example input).

    `prefix_tokens` are never dropped or merged: ("cls",), ("cls", "distillation"), or () for DETR/Swin/ResNet.
    `grid` is the (height, width) of the patch/feature grid, `window` the Swin window size, `sequence_length`
    the number of tokens entering the first block (None for convolutional models).
    """

    prefix_tokens: tuple[str, ...] = ()
    grid: tuple[int, int] | None = None
    window: tuple[int, int] | None = None
    sequence_length: int | None = None
    text: bool = False


#: (part, the children of the core module it holds) for the families a report splits into embeddings / blocks /
#: head: transformers and timm ViT, DeiT, Swin and BERT (a name a model does not have is skipped)
TRANSFORMER_PARTS = (
    ("embeddings", ("embeddings", "patch_embed", "cls_token", "dist_token", "reg_token", "pos_embed",
                    "absolute_pos_embed", "pos_drop", "patch_drop", "norm_pre")),
    ("blocks", ("layers", "encoder", "blocks")),
    ("head", ("layernorm", "pooler", "norm", "fc_norm", "attn_pool", "head_drop", "head", "head_dist")),
)
#: the same for ResNets (transformers, timm and the CIFAR layout): stem / stages / head
RESNET_PARTS = (
    ("stem", ("embedder", "conv1", "bn1", "act1", "maxpool")),
    ("stages", ("encoder", "layer1", "layer2", "layer3", "layer4")),
    ("head", ("pooler", "global_pool", "fc", "linear")),
)


@dataclass(frozen=True)
class TokenStack:
    """A run of blocks the same token sequence flows through, driven by one token reducer (`token_merge`,
    `token_clip`): a ViT's blocks, a Swin's four stages (its map of token importance carries across patch
    merging), a DETR encoder, or the Swin backbone inside a detector.

    `patch` is the token-reducing forward of its blocks, `layout` their token layout for the example input,
    `methods` the reductions the blocks support ("merge", "clip"), `needs_all_tokens` whether what reads the
    stack's output needs every token back.
    """

    blocks: tuple[BlockSite, ...]
    patch: ForwardPatch
    layout: TokenLayout
    methods: tuple[str, ...] = ("merge", "clip")
    needs_all_tokens: bool = True

    @property
    def name(self) -> str:
        """The common module prefix of the blocks' containers, e.g. "model.encoder.layers" (how reports and
        messages name it)."""
        parts = [block.name.split(".")[:-1] for block in self.blocks]
        common = []
        for column in zip(*parts):
            if len(set(column)) > 1:
                break
            common.append(column[0])
        return ".".join(common) or "the model's blocks"

    def owns(self, name: str) -> bool:
        return any(block.name == name for block in self.blocks)


class ModelAdapter(ABC):
    """Describes one model family. Subclasses set the class attributes and implement the abstract methods."""

    #: stable identifier used in saved outputs, e.g. "hf-detr" or "timm-vit"
    family: ClassVar[str]
    #: "transformers" or "timm"
    library: ClassVar[str]
    #: human name for messages and tables, e.g. "DETR (transformers)"
    display_name: ClassVar[str]
    #: the task the model's head serves: "image-classification", "object-detection", "feature-extraction", ...
    task: ClassVar[str] = "feature-extraction"

    def __init__(self, model: nn.Module, processor: Any = None):
        self.model = model
        #: the model's own preprocessing (an HF image processor or tokenizer, or a timm data config), if known
        self.processor = processor

    @classmethod
    @abstractmethod
    def handles(cls, model: nn.Module) -> bool:
        """True when this adapter describes `model`."""

    @abstractmethod
    def attention_sites(self) -> list[AttentionSite]:
        """Every attention module, in forward order."""

    @abstractmethod
    def ffn_sites(self) -> list[FFNSite]:
        """Every feed-forward module, in forward order (empty for ResNets)."""

    @abstractmethod
    def blocks(self) -> list[BlockSite]:
        """Every residual block, in forward order."""

    @abstractmethod
    def token_layout(self, inputs: dict[str, torch.Tensor] | None = None) -> TokenLayout:
        """The token layout for `inputs` (default: the example input)."""

    @abstractmethod
    def example_inputs(self, batch_size: int = 1, size: tuple[int, ...] | None = None,
                       seed: int = 0) -> dict[str, torch.Tensor]:
        """Keyword arguments for `model(**inputs)`: a deterministic example at the model's native size.

        `size` overrides the spatial size (height, width) for images or (sequence_length,) for text.
        """

    @abstractmethod
    def primary_output(self, outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output fidelity is measured on, as a (batch, features) tensor: logits, an embedding, or boxes."""

    @abstractmethod
    def install_attention_kernel(self, site: AttentionSite, kernel: AttentionKernel) -> None:
        """Route `site`'s softmax(QKᵀ)V through `kernel`; the kernel becomes a submodule named `attention_kernel`."""

    @abstractmethod
    def prepare_inputs(self, examples: list) -> dict[str, torch.Tensor]:
        """Model inputs for raw examples (PIL images, or strings for text models), with the model's own
        preprocessing (`self.processor`, or the family's documented defaults when none is known)."""

    # ----------------------------------------------------------------------------------------------------------
    def has_head(self) -> bool:
        """False for a bare backbone or encoder (no logits): it is measured by fidelity to a reference and
        distilled on its embedding, since it has no task metric or task loss."""
        return True

    def remove_attention_kernel(self, site: AttentionSite) -> None:
        """Undo `install_attention_kernel`: the site computes exact attention again.

        Adapters route through `attention_kernel` only while that submodule exists, so deleting it is enough.
        """
        module = self.module(site.name)
        if "attention_kernel" in module._modules:
            del module._modules["attention_kernel"]

    def detections(self, outputs: Any, image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Per image: `scores`, `labels` (indices of the model's classes) and `boxes` (x0, y0, x1, y1 in pixels of
        the original image of (height, width) `image_sizes[i]`), with the family's own post-processing."""
        from compressor.errors import CompressorError

        raise CompressorError(f"{self.display_name} models do not detect objects; evaluate them on "
                              "classification data")

    #: how a set-prediction detector's class logits become probabilities, for MTKD's and fidelity's per-query KL:
    #: "softmax" over the classes (DETR, whose last class is "no object") or "sigmoid", each class on its own
    #: (focal-loss detectors such as Conditional DETR)
    query_class_activation: ClassVar[str] = "softmax"

    def query_predictions(self, outputs: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A set-prediction detector's per-query class logits (batch, queries, classes) and normalised boxes
        (batch, queries, 4), in query order; None for every other model. Fidelity and MTKD compare these."""
        return None

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    # --- sites of an embedded model (a detector's backbone) ------------------------------------------------------
    def embedded_backbone(self) -> Any:
        """The backbone inside this model that a family adapter of its own describes (detectors: a
        `compressor.models.embedded_backbone.EmbeddedBackbone`), else None."""
        return None

    def all_attention_sites(self) -> list[AttentionSite]:
        """What passes choose from: the embedded backbone's attention sites (qualified names), then this
        model's own; `attention_sites()` stays the family's own architecture."""
        backbone = self.embedded_backbone()
        return (backbone.attention_sites() if backbone else []) + self.attention_sites()

    def all_ffn_sites(self) -> list[FFNSite]:
        backbone = self.embedded_backbone()
        return (backbone.ffn_sites() if backbone else []) + self.ffn_sites()

    def all_blocks(self) -> list[BlockSite]:
        backbone = self.embedded_backbone()
        return (backbone.blocks() if backbone else []) + self.blocks()

    def in_auto_scope(self, name: str) -> bool:
        """False for a site `targets: [auto]` never selects: one inside the embedded backbone, so that a recipe
        written for a detector's transformer keeps its meaning there; backbone sites are chosen by name."""
        backbone = self.embedded_backbone()
        return backbone is None or not backbone.owns(name)

    # --- token reduction (token_merge, token_clip) ---------------------------------------------------------------
    #: the token-reducing forward of this family's blocks (see `compressor.models.patches`); None: unsupported
    token_block_patch: ClassVar[ForwardPatch | None] = None
    #: the token reductions this family's blocks support: "merge" (ToMe) and "clip"
    token_reduction_methods: ClassVar[tuple[str, ...]] = ("merge", "clip")

    def token_reduction_blocks(self) -> list[BlockSite]:
        """The blocks whose tokens can be reduced, in forward order (the model's one token stack); empty when
        unsupported. A model with several token stacks overrides `token_stacks` instead."""
        return []

    def output_needs_all_tokens(self) -> bool:
        """True when the model's output reads every token (pooling over tokens, a decoder, dense maps), so a
        reduced sequence must be restored to the full token map after the last block."""
        return True

    def token_stacks(self, inputs: dict[str, torch.Tensor] | None = None) -> list[TokenStack]:
        """Every run of blocks that one token reducer drives, in forward order, laid out for `inputs` (default:
        the example input). A standalone model has one (its `token_reduction_blocks`); a detector may have two
        (its embedded Swin backbone's blocks, then its encoder layers), each reduced on its own: tokens do not flow
        from one into the other as a sequence (the backbone's feature map is projected and flattened anew before
        the encoder)."""
        backbone = self.embedded_backbone()
        if backbone is not None and inputs is None:
            inputs = self.example_inputs()
        stacks = backbone.token_stacks(inputs) if backbone is not None else []
        blocks = self.token_reduction_blocks()
        patch = type(self).token_block_patch
        if blocks and patch is not None:
            stacks.append(TokenStack(blocks=tuple(blocks), patch=patch, layout=self.token_layout(inputs),
                                     methods=type(self).token_reduction_methods,
                                     needs_all_tokens=self.output_needs_all_tokens()))
        return stacks

    def install_token_reducer(self, reducer: Any, stack: TokenStack | None = None) -> None:
        """Make every block of `stack` (default: the model's only token stack) run its `patch`, driven by `reducer`
        (a `TokenReducer`, or for windowed attention a `compressor.ops.window_tokens.WindowTokenReducer`); blocks
        are numbered 0..n-1 within the stack."""
        from compressor.errors import CompressorError

        stack = stack if stack is not None else self._only_token_stack()
        if self.token_reducer(stack) is not None:
            raise CompressorError(f"{stack.name} already has a token reducer (token_merge and token_clip cannot "
                                  "run on the same blocks); keep one of the two passes")
        blocks = {site.name: self.module(site.name) for site in stack.blocks}
        stack.patch.install(blocks)
        for index, block in enumerate(blocks.values()):
            block.token_reducer, block.token_block = reducer, index
            block.token_last = index == len(blocks) - 1

    def token_reducer(self, stack: TokenStack | None = None) -> Any:
        """The reducer installed on `stack`'s blocks (default: the model's first token stack), if any."""
        stacks = [stack] if stack is not None else self.token_stacks()[:1]
        return getattr(self.module(stacks[0].blocks[0].name), "token_reducer", None) if stacks else None

    def _only_token_stack(self) -> TokenStack:
        from compressor.errors import CompressorError

        stacks = self.token_stacks()
        if not stacks:
            raise CompressorError(f"token reduction is not supported for {self.display_name} models")
        if len(stacks) > 1:
            raise CompressorError(f"{self.display_name} models have {len(stacks)} token stacks "
                                  f"({', '.join(s.name for s in stacks)}); say which one to reduce")
        return stacks[0]

    # --- where the cost is (the report's per-part table) -----------------------------------------------------------
    #: (part, names of the core module's children or direct parameters it holds), in report order; an unlisted
    #: child is a part of its own, and everything outside the core module belongs to `head_part`
    cost_part_children: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]] = ()
    #: the part holding what lies outside the core module (task heads)
    head_part: ClassVar[str] = "head"

    def core_module(self) -> str:
        """The qualified name of the module holding the model's body, "" for the root (timm models)."""
        return ""

    def cost_parts(self) -> list[tuple[str, tuple[str, ...]]]:
        """The model's top-level parts in order, each as (name, qualified prefixes of modules or parameters), so
        that a report says where params and FLOPs are. The parts are disjoint and cover the model: every child
        and direct parameter of the core module falls in its `cost_part_children` part (or a part of its own), and
        what lies outside the core (task heads beside a base model) in `head_part`."""
        core = self.core_module()
        body = self.module(core) if core else self.model
        listed = {child: part for part, children in type(self).cost_part_children for child in children}
        members: dict[str, list[str]] = {part: [] for part, _ in type(self).cost_part_children}
        local = _present(body._modules) + _present(body._parameters)
        for name in local:
            members.setdefault(listed.get(name, name), []).append(f"{core}.{name}" if core else name)
        outside = _outside_of(self.model, core)
        if outside:
            members[self.head_part] = members.pop(self.head_part, []) + outside
        return [(part, tuple(prefixes)) for part, prefixes in members.items() if prefixes]

    def describe_input(self, inputs: dict[str, torch.Tensor]) -> str:
        """A short human description of an input, e.g. "1×3×800×1066" for the report."""
        main = next((inputs[k] for k in ("pixel_values", "input_ids") if k in inputs), next(iter(inputs.values())))
        return "×".join(str(s) for s in main.shape)


def _outside_of(model: nn.Module, core: str) -> list[str]:
    """Qualified names of the children and direct parameters of every module above `core` that do not lead to it
    (the heads a task model puts beside its base model), in registration order."""
    found: list[str] = []
    path = core.split(".") if core else []
    module = model
    for depth, step in enumerate(path):
        prefix = "".join(f"{above}." for above in path[:depth])
        found += [prefix + name for name in _present(module._modules) + _present(module._parameters) if name != step]
        module = module._modules[step]
    return found


def _present(registered: dict[str, Any]) -> list[str]:
    """The names a module registered with a value (a child or parameter can be registered as None)."""
    return [name for name, value in registered.items() if value is not None]
