"""Loading transformers models from the Hub or a local save_pretrained directory, and rebuilding them from a config.

Loading reads `config.json` before any weights so an unsupported architecture or a wrong source fails in a
second with one line, not after a multi-gigabyte download; the weights must then cover the model exactly
(`compressor.models.weight_coverage`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from compressor.errors import BUILD_ERRORS, SourceError, UnsupportedModelError
from compressor.loaders.config_file import CONFIG, read_config
from compressor.loaders.hub_files import first_line, hub_file, offline_hint
from compressor.models import ADAPTER_CLASSES, SUPPORTED_FAMILIES
from compressor.models.hf_common import HFAdapter
from compressor.models.weight_coverage import bounded_by_weights, check_loading_report, header_totals

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "special_tokens_map.json")
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json",)
#: what a transformers source is, for the messages
_KIND, _DIRECTORY = "transformers model", "a directory written by save_pretrained"


def _model_directory(source: str, *, revision: str | None, token: str | None) -> tuple[Path, bool]:
    """(the directory holding config.json, whether `source` is local): the local directory itself, or the Hub
    cache snapshot config.json was fetched into; failing with one line for every kind of bad source."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local, True
    if local.exists():
        raise SourceError(f"{local} is a file; give the directory written by save_pretrained, or a Hub id")
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
        raise SourceError(f"local directory {source} does not exist; give an existing save_pretrained directory "
                          f"or a Hub id like org/name")
    return hub_file(source, CONFIG, revision=revision, token=token, kind=_KIND).parent, False


def _known_model_types() -> set[str]:
    from transformers import CONFIG_MAPPING

    return set(CONFIG_MAPPING.keys())


def _adapter_class_for(model_type: str | None, architecture: str | None, source: str) -> type[HFAdapter]:
    for cls in ADAPTER_CLASSES:
        if issubclass(cls, HFAdapter) and model_type in cls.model_types:
            return cls
    # named only when transformers knows it: a file that is not a model config is described, never quoted
    found = (f"model_type {model_type!r}" + (f" ({architecture})" if architecture else "") + " model"
             if model_type in _known_model_types() else "model of an unknown model_type")
    raise UnsupportedModelError(f"{source} is a {found}, which this toolkit does not support; supported: "
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
            present |= hub_file(source, name, revision=revision, token=token, required=False) is not None
    if not present:
        return None
    loader = AutoTokenizer if kind == "tokenizer" else AutoImageProcessor
    try:
        return loader.from_pretrained(str(config_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise SourceError(f"the {kind} files of {source} cannot be read: {first_line(error)}") from None


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
    directory, is_local = _model_directory(source, revision=revision, token=token)
    raw_config = read_config(directory, expected=_DIRECTORY)
    model_type, architecture = identity_of(raw_config, source)
    adapter_class = _adapter_class_for(model_type, architecture, source)

    location = str(directory) if is_local else source
    hub_options = {} if is_local else {"revision": revision, "token": token}
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **hub_options)
    except (OSError, StrictDataclassError, *BUILD_ERRORS) as error:
        raise SourceError(f"the config of {source} cannot be read: {' '.join(str(error).split())[:300]}") from None
    _disable_backbone_download(config)
    model_class = _checked_model_class(architecture, model_type, source, trust_remote_code)
    weight_files = _weight_files(source, directory, is_local, revision=revision, token=token)
    try:
        with bounded_by_weights(header_totals(weight_files), source):
            model, loading_report = model_class.from_pretrained(
                location, config=config, use_safetensors=True, trust_remote_code=trust_remote_code,
                output_loading_info=True, **hub_options)
    except (OSError, ValueError) as error:
        hint = "" if is_local or not offline_hint() else f" ({offline_hint()})"
        raise SourceError(f"cannot load the weights of {source} with {model_class.__name__}: {first_line(error)}"
                          f"{hint}; the toolkit reads model.safetensors (re-save a .bin checkpoint with "
                          "save_pretrained)") from None
    except SafetensorError as error:
        raise SourceError(f"the model.safetensors of {source} is corrupt or truncated ({first_line(error)}); "
                          "re-download it or re-save the model with save_pretrained") from None
    except RuntimeError:  # transformers' verdict on weights whose shapes the config does not describe
        raise SourceError(f"the weights of {source} do not have the shapes its config.json describes; the files "
                          "come from different models") from None
    except BUILD_ERRORS as error:
        raise SourceError(f"cannot build the architecture the config.json of {source} describes "
                          f"({type(error).__name__}: {first_line(error)}); the file is damaged") from None
    check_loading_report(loading_report, source, type(model).__name__)
    processor = _load_processor(adapter_class.processor_kind, source, directory, is_local,
                                revision=revision, token=token, trust_remote_code=trust_remote_code)
    return model.eval(), processor


def identity_of(config: dict, source: str) -> tuple[str | None, str | None]:
    """(model_type, first of `architectures`) of a raw config.json, checked to be what transformers writes: a
    string, and a list of class names."""
    model_type, architectures = config.get("model_type"), config.get("architectures")
    if model_type is not None and not isinstance(model_type, str):
        raise SourceError(f"the config.json of {source}: `model_type` must be a string such as \"vit\", got a "
                          f"{type(model_type).__name__}; re-save the model with save_pretrained")
    if architectures is not None and (not isinstance(architectures, list)
                                      or not all(isinstance(name, str) and name for name in architectures)):
        raise SourceError(f"the config.json of {source}: `architectures` must be a list of class names such as "
                          "[\"ViTForImageClassification\"]; re-save the model with save_pretrained")
    return model_type, (architectures[0] if architectures else None)


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
        return hub_file(source, name, revision=revision, token=token, required=False)

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
    model_type, architecture = identity_of(config_dict, "the saved model")
    if model_type is None:
        raise SourceError("the saved config has no model_type; the output's config.json is damaged")
    config_dict.pop("model_type")
    _adapter_class_for(model_type, architecture, "the saved model")
    config = AutoConfig.for_model(model_type, **config_dict)
    _disable_backbone_download(config)
    model_class = _model_class(architecture)
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
    adapter_class = _adapter_class_for(*identity_of(config, str(directory)), str(directory))
    return _load_processor(adapter_class.processor_kind, str(directory), Path(directory), True, revision=None,
                           token=None, trust_remote_code=False)
