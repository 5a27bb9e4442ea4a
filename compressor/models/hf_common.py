"""What every Hugging Face transformers adapter shares: kernel routing, example inputs, loading and rebuilding.

transformers 5.x computes every attention of the supported families through `AttentionInterface`
(`config._attn_implementation` names the function). Registering one dispatcher under the name "compressor" lets a
pass swap softmax(QKᵀ)V for its own kernel per module, without touching the projections or the model's forward:
the dispatcher calls `module.attention_kernel` where a pass installed one and torch's SDPA elsewhere. A mask
function must be registered under the same name, or transformers hands the function `attention_mask=None` and
padded keys are silently attended.

Loading reads `config.json` before any weights so an unsupported architecture or a wrong source fails in a
second with one line, not after a multi-gigabyte download.
"""

from __future__ import annotations

import inspect
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from compressor.errors import CompressorError, SourceError, UnsupportedModelError
from compressor.models.base import AttentionKernel, AttentionSite, FFNSite, ModelAdapter
from compressor.models.weight_coverage import bounded_by_weights, check_loading_report, header_totals

#: the name the dispatcher and its mask function are registered under in transformers
ATTENTION_IMPLEMENTATION = "compressor"

#: ImageNet normalisation, the documented default when a vision model comes without an image processor
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "special_tokens_map.json")
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json",)


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


# ------------------------------------------------------------------------------------------------------------------
# loading from the Hub or a local directory


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return " (HF_HUB_OFFLINE is set, so only the local cache is searched: unset it to download, or pass a " \
               "local save_pretrained directory)"
    return ""


def _hub_file(source: str, filename: str, *, revision: str | None, token: str | None,
              required: bool) -> str | None:
    """Path of `filename` of Hub repo `source` in the local cache (downloading it), or None when the repo lacks it
    (or, for an optional file, when it cannot be fetched)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    where = source + (f"@{revision}" if revision else "")
    try:
        return hf_hub_download(source, filename, revision=revision, token=token)
    except GatedRepoError:
        raise SourceError(f"{source} is gated on the Hugging Face Hub: accept its terms on the model page and "
                          f"pass a token (--token or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise SourceError(f"{source} is not a local directory, and the Hugging Face Hub has no model {source!r} "
                          f"(or it is private: pass a token); give a Hub id like facebook/detr-resnet-50 or an "
                          f"existing local directory") from None
    except RevisionNotFoundError:
        raise SourceError(f"{source} has no revision {revision!r}; give an existing branch, tag or commit") from None
    except LocalEntryNotFoundError:  # offline, or the network is down, and not in the cache
        if not required:
            return None
        raise SourceError(f"{source} is not a local directory, and its {filename} cannot be fetched from the "
                          f"Hugging Face Hub nor found in the local cache"
                          f"{_offline_hint() or '; check the network connection (and HF_ENDPOINT if you use a mirror)'}"
                          ) from None
    except EntryNotFoundError:
        if not required:
            return None
        raise SourceError(f"{where} has no {filename}; it is not a transformers model repository") from None
    except HFValidationError:
        raise SourceError(f"{source!r} is neither an existing local directory nor a valid Hub id (org/name)"
                          ) from None
    except (HfHubHTTPError, OSError) as error:
        if not required:
            return None
        raise SourceError(f"cannot fetch {filename} of {where} from the Hugging Face Hub: {_first_line(error)}"
                          ) from None


def _resolve_config_file(source: str, *, revision: str | None, token: str | None) -> tuple[Path, bool]:
    """(path of config.json, whether `source` is local) — failing with one line for every kind of bad source."""
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise SourceError(f"{local} has no config.json; give a directory written by save_pretrained")
        return local / "config.json", True
    if local.exists():
        raise SourceError(f"{local} is a file; give the directory written by save_pretrained, or a Hub id")
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
        raise SourceError(f"local directory {source} does not exist; give an existing save_pretrained directory "
                          f"or a Hub id like org/name")
    return Path(_hub_file(source, "config.json", revision=revision, token=token, required=True)), False


def _adapter_class_for(model_type: str | None, architecture: str | None, source: str) -> type[HFAdapter]:
    from compressor.models import ADAPTER_CLASSES, SUPPORTED_FAMILIES  # lazy: the registry imports this module

    for cls in ADAPTER_CLASSES:
        if issubclass(cls, HFAdapter) and model_type in cls.model_types:
            return cls
    found = f"model_type {model_type!r}" + (f" ({architecture})" if architecture else "")
    raise UnsupportedModelError(f"{source} is a {found} model, which this toolkit does not support; supported: "
                                f"{SUPPORTED_FAMILIES}")


def _load_processor(kind: str, source: str, config_dir: Path, is_local: bool, *, revision: str | None,
                    token: str | None, trust_remote_code: bool):
    """The tokenizer or image processor saved beside the model, or None when there is none.

    Hub files are fetched one by one into the cache snapshot that already holds config.json and loaded from
    there, so no repository-listing call is needed (mirrors such as olah refuse those).
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    files = _TOKENIZER_FILES if kind == "tokenizer" else _IMAGE_PROCESSOR_FILES
    if is_local:
        present = any((config_dir / name).is_file() for name in files)
    else:
        present = False
        for name in files:
            present |= _hub_file(source, name, revision=revision, token=token, required=False) is not None
    if not present:
        return None
    loader = AutoTokenizer if kind == "tokenizer" else AutoImageProcessor
    try:
        return loader.from_pretrained(str(config_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise SourceError(f"the {kind} files of {source} cannot be read: {_first_line(error)}") from None


def load_hf_model(source: str, *, revision: str | None = None, token: str | None = None,
                  trust_remote_code: bool = False) -> tuple[nn.Module, Any]:
    """(model in eval mode, processor or None) from a Hub id or a local save_pretrained directory.

    The architecture is checked against the supported families from config.json alone, before any weights are
    read. The class is `config.architectures[0]` (AutoModel when transformers has no such class); weights must be
    safetensors; remote code runs only with `trust_remote_code=True`.
    """
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError
    from transformers import AutoConfig

    from compressor.architectures import register_architectures

    register_architectures()
    source = str(source)
    config_file, is_local = _resolve_config_file(source, revision=revision, token=token)
    try:
        raw_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise SourceError(f"{config_file} is not readable JSON ({error}); re-save the model") from None
    if not isinstance(raw_config, dict):
        raise SourceError(f"{config_file} holds a JSON {type(raw_config).__name__}, not an object of settings; "
                          "re-save the model")
    architectures = raw_config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    adapter_class = _adapter_class_for(raw_config.get("model_type"), architecture, source)

    location = str(config_file.parent) if is_local else source
    hub_options = {} if is_local else {"revision": revision, "token": token}
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **hub_options)
    except (OSError, ValueError, TypeError, StrictDataclassError) as error:
        raise SourceError(f"the config of {source} cannot be read: {' '.join(str(error).split())[:300]}") from None
    _disable_backbone_download(config)
    model_class = _checked_model_class(architecture, raw_config.get("model_type"), source, trust_remote_code)
    weight_files = _weight_files(source, config_file.parent, is_local, revision=revision, token=token)
    try:
        with bounded_by_weights(header_totals(weight_files), source):
            model, loading_report = model_class.from_pretrained(
                location, config=config, use_safetensors=True, trust_remote_code=trust_remote_code,
                output_loading_info=True, **hub_options)
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot load the weights of {source} with {model_class.__name__}: {_first_line(error)}"
                          f"{'' if is_local else _offline_hint()}; the toolkit reads model.safetensors "
                          f"(re-save a .bin checkpoint with save_pretrained)") from None
    except SafetensorError as error:
        raise SourceError(f"the model.safetensors of {source} is corrupt or truncated ({_first_line(error)}); "
                          "re-download it or re-save the model with save_pretrained") from None
    except RuntimeError:  # transformers' verdict on weights whose shapes the config does not describe
        raise SourceError(f"the weights of {source} do not have the shapes its config.json describes; the files "
                          "come from different models") from None
    except (ZeroDivisionError, TypeError, KeyError, AttributeError, AssertionError) as error:
        raise SourceError(f"cannot build the architecture the config.json of {source} describes "
                          f"({type(error).__name__}: {_first_line(error)}); the file is damaged") from None
    check_loading_report(loading_report, source, type(model).__name__)
    processor = _load_processor(adapter_class.processor_kind, source, config_file.parent, is_local,
                                revision=revision, token=token, trust_remote_code=trust_remote_code)
    return model.eval(), processor


def _checked_model_class(architecture: str | None, model_type: str | None, source: str,
                         trust_remote_code: bool) -> type:
    """The class config.json's `architectures` names, which must be a class of its `model_type` (AutoModel when
    the config names none, or names remote code the user allowed)."""
    from transformers import AutoModel

    if architecture is None:
        return AutoModel
    model_class = _model_class(architecture)
    if model_class is None or not hasattr(model_class, "from_pretrained"):
        if trust_remote_code:
            return AutoModel
        raise SourceError(f"the config.json of {source} names the class {architecture!r}, which transformers does "
                          f"not have; fix `architectures` in config.json (e.g. the class it was saved from)")
    declared = getattr(getattr(model_class, "config_class", None), "model_type", None)
    if declared and declared != model_type:
        raise SourceError(f"the config.json of {source} says model_type {model_type!r} but names the class "
                          f"{architecture} (a {declared!r} model); fix `model_type` or `architectures` so they agree")
    return model_class


#: the weight files of a transformers checkpoint: one safetensors file, or an index of shards
_SINGLE_WEIGHTS, _WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"


def _weight_files(source: str, directory: Path, is_local: bool, *, revision: str | None,
                  token: str | None) -> list[Path]:
    """The local paths of the checkpoint's safetensors files (downloaded into the cache for a Hub id); [] when it
    has none (loading then fails with its own message)."""
    def fetch(name: str) -> Path | None:
        if is_local:
            return directory / name if (directory / name).is_file() else None
        found = _hub_file(source, name, revision=revision, token=token, required=False)
        return Path(found) if found else None

    single = fetch(_SINGLE_WEIGHTS)
    if single is not None:
        return [single]
    index = fetch(_WEIGHTS_INDEX)
    if index is None:
        return []
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SourceError(f"{index} is not a valid safetensors index; re-save the model with save_pretrained"
                          ) from None
    if any(not isinstance(shard, str) or "/" in shard or "\\" in shard for shard in shards):
        raise SourceError(f"the safetensors index of {source} names shards outside the checkpoint; re-download or "
                          "re-save the model")
    files = [fetch(shard) for shard in shards]
    if any(path is None for path in files):
        raise SourceError(f"the safetensors index of {source} names shards that are missing; re-download or "
                          "re-save the model")
    return files


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _model_class(architecture: str | None) -> type | None:
    """The class a config.json `architectures` entry names: transformers' own, or one of the toolkit's
    (`compressor.architectures`)."""
    import transformers

    from compressor.architectures import architecture_class

    return getattr(transformers, architecture, None) or architecture_class(architecture) if architecture else None


def _disable_backbone_download(config) -> None:
    """DETR-style configs may ask for an ImageNet backbone download; a checkpoint or a rebuild never needs it."""
    if hasattr(config, "use_pretrained_backbone"):
        config.use_pretrained_backbone = False
    backbone_config = getattr(config, "backbone_config", None)
    if backbone_config is not None and hasattr(backbone_config, "use_pretrained_backbone"):
        backbone_config.use_pretrained_backbone = False


def build_hf_model(config_dict: dict) -> nn.Module:
    """The architecture described by a saved config dict, with fresh random weights and no download, in eval mode.

    Used when reloading a compressed model: the passes rewrite this skeleton, then the saved weights are loaded.
    """
    from transformers import AutoConfig, AutoModel

    from compressor.architectures import register_architectures

    register_architectures()
    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type", None)
    if model_type is None:
        raise SourceError("the saved config has no model_type; the output's config.json is damaged")
    architectures = config_dict.get("architectures") or []
    _adapter_class_for(model_type, architectures[0] if architectures else None, "the saved model")
    config = AutoConfig.for_model(model_type, **config_dict)
    _disable_backbone_download(config)
    model_class = _model_class(architectures[0] if architectures else None)
    if model_class is None or not hasattr(model_class, "_from_config"):
        return AutoModel.from_config(config).eval()
    return model_class._from_config(config).eval()


def hf_config_dict(model: nn.Module) -> dict:
    """The model's config exactly as save_pretrained writes it to config.json (JSON types, non-default values,
    `architectures` naming the model's class): what a compressed output's config.json starts from."""
    config = json.loads(model.config.to_json_string(use_diff=True))
    config["architectures"] = [type(model).__name__]
    return config


def load_processor(directory: Path, config: dict) -> Any:
    """The image processor or tokenizer saved in a compressed model's directory (None when there is none)."""
    architectures = config.get("architectures") or []
    adapter_class = _adapter_class_for(config.get("model_type"), architectures[0] if architectures else None,
                                       str(directory))
    return _load_processor(adapter_class.processor_kind, str(directory), Path(directory), True, revision=None,
                           token=None, trust_remote_code=False)
