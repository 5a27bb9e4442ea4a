"""What every Hugging Face transformers adapter shares: kernel routing, example inputs and outputs.

transformers 5.x computes every attention of the supported families through `AttentionInterface`
(`config._attn_implementation` names the function). Registering one dispatcher under the name "compressor" lets a
pass swap softmax(QKᵀ)V for its own kernel per module, without touching the projections or the model's forward:
the dispatcher calls `module.attention_kernel` where a pass installed one and torch's SDPA elsewhere. A mask
function must be registered under the same name, or transformers hands the function `attention_mask=None` and
padded keys are silently attended.

Loading and rebuilding transformers models is `compressor.loaders.hf_models`.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.models.base import AttentionKernel, AttentionSite, FFNSite, ModelAdapter

#: the name the dispatcher and its mask function are registered under in transformers
ATTENTION_IMPLEMENTATION = "compressor"

#: ImageNet normalisation, the documented default when a vision model comes without an image processor
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



# ------------------------------------------------------------------------------------------------------------------
# attention routing


def _compressor_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                          **kwargs):
    """The function transformers calls for every attention once a model uses the "compressor" implementation.

    Modules with an installed kernel run it (attention dropout is not applied: the kernels replace inference-time
    attention); every other module runs transformers' own SDPA path with the same mask, i.e. the same attention
    as the default "sdpa" implementation.
    """
    kernel = getattr(module, "attention_kernel", None)
    if kernel is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    output = kernel(query, key, value, attention_mask, scaling)
    return output.transpose(1, 2).contiguous(), None


@lru_cache(maxsize=None)
def register_attention_dispatcher() -> str:
    """Register the dispatcher and its mask function with transformers (once per process); returns their name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, _compressor_attention)
    # sdpa_mask: bool (batch, 1, q, k) masks with True = attend, or None when nothing is masked
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)
    return ATTENTION_IMPLEMENTATION


@lru_cache(maxsize=None)
def _forward_uses_attention_interface(module_class: type) -> bool:
    """True when `module_class.forward` dispatches through transformers' AttentionInterface.

    Older transformers releases (and some families still) compute attention inline; a kernel attached to such a
    module would never run, so installing one must fail loudly instead.
    """
    try:
        source = inspect.getsource(module_class.forward)
    except (OSError, TypeError):  # no source shipped: trust the family adapter
        return True
    return "ALL_ATTENTION_FUNCTIONS" in source


# ------------------------------------------------------------------------------------------------------------------
# small helpers shared by the family adapters


def flatten_per_example(tensor: torch.Tensor) -> torch.Tensor:
    """(batch, ...) -> (batch, features)."""
    return tensor.reshape(tensor.shape[0], -1)


def as_pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def size_field(size: Any, key: str) -> int | None:
    """One field of an image processor's size (a transformers SizeDict, or a plain dict in older processors)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def processor_image_size(processor: Any) -> tuple[int, int] | None:
    """The (height, width) an image processor produces for a square image, when it fixes one."""
    if processor is None:
        return None
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    for size in (crop, getattr(processor, "size", None)):
        if size is None:
            continue
        if size_field(size, "height") and size_field(size, "width"):
            return size_field(size, "height"), size_field(size, "width")
        if size_field(size, "shortest_edge") and not size_field(size, "longest_edge"):
            return size_field(size, "shortest_edge"), size_field(size, "shortest_edge")
    return None


class HFAdapter(ModelAdapter):
    """Shared base of the transformers adapters: model-type matching, site building, kernel installation.

    A subclass lists the `model_types` it describes (the `model_type` in config.json), says whether its raw inputs
    go through a tokenizer or an image processor, and locates its sites.
    """

    library = "transformers"
    #: config.json `model_type` values this adapter describes
    model_types: ClassVar[tuple[str, ...]] = ()
    #: "image" (AutoImageProcessor) or "tokenizer" (AutoTokenizer): what `load_hf_model` loads beside the model
    processor_kind: ClassVar[str] = "image"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        from transformers import PreTrainedModel

        return isinstance(model, PreTrainedModel) and getattr(model.config, "model_type", None) in cls.model_types

    @property
    def config(self):
        return self.model.config

    def core_module(self) -> str:
        """The base model a task model wraps (`vit` in ViTForImageClassification), "" for a bare base model."""
        prefix = getattr(self.model, "base_model_prefix", "")
        return prefix if prefix and isinstance(getattr(self.model, prefix, None), nn.Module) else ""

    # --- sites ---------------------------------------------------------------------------------------------------
    def named_modules_of_type(self, *types: type) -> list[tuple[str, nn.Module]]:
        """Modules of the given classes with their qualified names, in registration (= forward) order."""
        return [(name, module) for name, module in self.model.named_modules() if isinstance(module, types)]

    def make_attention_site(self, name: str, stack: str, layer: int, *, kind: str = "self",
                            scope: str = "global", projections: tuple[str, str, str, str] | None = None
                            ) -> AttentionSite:
        """An AttentionSite for the module `name` (the one that calls the AttentionInterface).

        `projections` are the qualified (query, key, value, output) names; the default is the
        `q_proj/k_proj/v_proj/o_proj` children most 5.x attention modules have.
        """
        query, key, value, output = projections or tuple(f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"))
        module = self.module(name)
        head_dim = int(getattr(module, "head_dim", None) or module.attention_head_size)
        num_heads = getattr(module, "num_attention_heads", None) or self.module(query).out_features // head_dim
        return AttentionSite(name=name, stack=stack, layer=layer, kind=kind, scope=scope, num_heads=int(num_heads),
                             head_dim=head_dim, query=query, key=key, value=value, output=output)

    @staticmethod
    def make_ffn_site(name: str, stack: str, layer: int, fc1: str = "fc1", fc2: str = "fc2",
                      activation: str = "activation_fn") -> FFNSite:
        """An FFNSite whose fc1/fc2/activation names are relative to the MLP module `name`."""
        return FFNSite(name=name, stack=stack, layer=layer, fc1=f"{name}.{fc1}", fc2=f"{name}.{fc2}",
                       activation=f"{name}.{activation}")

    # --- attention kernels ---------------------------------------------------------------------------------------
    def install_attention_kernel(self, site: AttentionSite, kernel: AttentionKernel) -> None:
        module = self.module(site.name)
        if not _forward_uses_attention_interface(type(module)):
            raise CompressorError(
                f"{site.name} ({type(module).__name__}) computes attention inline in this transformers version, "
                f"not through AttentionInterface, so its attention cannot be replaced; exclude it with `ignore`")
        if not self.model._can_set_attn_implementation():
            raise CompressorError(
                f"{type(self.model).__name__} cannot switch its attention implementation at run time, so "
                f"{site.name} cannot get a replacement attention kernel")
        register_attention_dispatcher()
        module.add_module("attention_kernel", kernel)
        if self.config._attn_implementation != ATTENTION_IMPLEMENTATION:
            # the dict form switches the model's own config only, not sub-models without attention (backbones)
            self.model.set_attn_implementation({"": ATTENTION_IMPLEMENTATION})

    # --- outputs -------------------------------------------------------------------------------------------------
    def has_head(self) -> bool:
        """transformers names task classes `...For<Task>` (BertForSequenceClassification) and bare encoders
        `...Model` (BertModel, ViTModel)."""
        return "For" in type(self.model).__name__

    @staticmethod
    def head_output(outputs: Any) -> torch.Tensor | None:
        """A task head's prediction as (batch, features): `logits`, else every `*logits` field concatenated."""
        logits = getattr(outputs, "logits", None)
        if logits is not None:
            return flatten_per_example(logits)
        named = [value for key, value in outputs.items() if key.endswith("logits") and value is not None] \
            if hasattr(outputs, "items") else []
        return torch.cat([flatten_per_example(v) for v in named], dim=1) if named else None


class HFVisionAdapter(HFAdapter):
    """The image families: deterministic pixel inputs at the native size, the image processor (or a documented
    default) for real images, and a primary output that prefers a head's logits over pooled features."""

    #: (height, width) of the example input when neither the config nor the processor gives one
    default_image_size: ClassVar[tuple[int, int]] = (224, 224)

    def native_image_size(self) -> tuple[int, int]:
        """The input size the model was built for: config.image_size, else its processor's, else the default."""
        configured = getattr(self.config, "image_size", None)
        if configured:
            return as_pair(configured)
        return processor_image_size(self.processor) or self.default_image_size

    def example_inputs(self, batch_size: int = 1, size: tuple[int, ...] | None = None,
                       seed: int = 0) -> dict[str, torch.Tensor]:
        """Standard-normal pixel values (what normalised images look like) at the native or the given size.

        At a non-native size, models with learned position embeddings get `interpolate_pos_encoding` (as a bool
        tensor, so every input stays a tensor).
        """
        height, width = as_pair(size) if size is not None else self.native_image_size()
        generator = torch.Generator().manual_seed(seed)
        inputs = {"pixel_values": torch.randn(batch_size, self.config.num_channels, height, width,
                                              generator=generator)}
        if (height, width) != self.native_image_size() and \
                "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters:
            inputs["interpolate_pos_encoding"] = torch.tensor(True)
        return inputs

    def default_image_processor(self):
        """The documented default when no processor is known: resize to the native size, ImageNet mean/std."""
        from transformers import ViTImageProcessor

        height, width = self.native_image_size()
        return ViTImageProcessor(size={"height": height, "width": width}, image_mean=list(IMAGENET_MEAN),
                                 image_std=list(IMAGENET_STD))

    def prepare_inputs(self, examples: list) -> dict[str, torch.Tensor]:
        processor = self.processor if self.processor is not None else self.default_image_processor()
        return dict(processor(images=[image.convert("RGB") for image in examples], return_tensors="pt"))

    def primary_output(self, outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's logits; for a bare model its pooler output, else `bare_model_output`."""
        head = self.head_output(outputs)
        if head is not None:
            return head
        if getattr(outputs, "pooler_output", None) is not None:
            return flatten_per_example(outputs.pooler_output)
        return self.bare_model_output(outputs)

    def bare_model_output(self, outputs: Any) -> torch.Tensor:
        """The embedding of a model with neither head nor pooler: the token average (overridden per family)."""
        return outputs.last_hidden_state.mean(dim=1)
