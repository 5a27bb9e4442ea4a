"""Turn whatever the user names as a model into a loaded model and its adapter.

A source is a Hub id (`facebook/detr-resnet-50`; timm models as `timm/<name>` or `hf-hub:timm/<name>`), a local
`save_pretrained` directory (transformers or timm layout), a directory written by `compress` (recognised by the
`compression_config` entry of its config.json), a CIFAR ResNet checkpoint file of akamaster/pytorch_resnet_cifar10
(`.th`, or its `.safetensors` conversion), or an `nn.Module` already in memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import nn

from compressor.errors import SourceError
from compressor.library_progress import library_progress_bars
from compressor.loaders.config_file import CONFIG, read_config
from compressor.loaders.hf_models import load_hf_model
from compressor.loaders.hub_files import hub_file
from compressor.loaders.hub_reachability import cache_only_when_hub_unreachable
from compressor.loaders.loaded_model import LoadedModel
from compressor.loaders.timm_models import load_timm_model
from compressor.models import adapter_for
from compressor.output_guard import COMPRESSION_KEY
from compressor.serialization import download_compressed, load_compressed

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _is_timm_config(config: dict) -> bool:
    """timm's config.json names its `architecture`; transformers' names a `model_type`."""
    return "architecture" in config and "model_type" not in config


def load_source(source: str | os.PathLike | nn.Module, *, revision: str | None = None,
                token: str | bool | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """Load `source` (see the module docstring) and pick its adapter."""
    if isinstance(source, nn.Module):
        return LoadedModel(source.eval(), adapter_for(source), type(source).__name__, type(source).__name__)
    text = str(source)
    if text.startswith(("timm/", "hf-hub:")):
        with cache_only_when_hub_unreachable():
            return _load_timm(text, token=token)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            return _load_checkpoint_file(path)
        return _load_directory(path, trust_remote_code=trust_remote_code)
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text) or text.count("/") > 1:
        raise SourceError(f"no such model directory: {path}; pass an existing directory or a Hub id like "
                          "facebook/detr-resnet-50")
    with cache_only_when_hub_unreachable():  # weights too: transformers downloads them with its own retries
        config = read_config(hub_file(text, CONFIG, revision=revision, token=token).parent)
        if COMPRESSION_KEY in config:
            return download_compressed(text, revision=revision, token=token)
        if _is_timm_config(config):
            return _load_timm(f"hf-hub:{text}" + (f"@{revision}" if revision else ""), token=token)
        return _load_transformers(text, revision=revision, token=token, trust_remote_code=trust_remote_code)


def _load_directory(path: Path, *, trust_remote_code: bool) -> LoadedModel:
    config = read_config(path)
    if COMPRESSION_KEY in config:
        return load_compressed(path)
    if _is_timm_config(config):
        return _load_timm(str(path))
    return _load_transformers(str(path), trust_remote_code=trust_remote_code)


#: single-file checkpoints a source may be (their architecture is inferred from the weights)
CHECKPOINT_SUFFIXES = (".th", ".pt", ".pth", ".safetensors")


def _load_checkpoint_file(path: Path) -> LoadedModel:
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise SourceError(f"{path} is a file; a model source is a directory with config.json, a Hub id, or a CIFAR "
                          f"ResNet checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    from compressor.architectures.cifar_resnet import cifar_image_processor, model_from_akamaster

    model, processor = model_from_akamaster(path), cifar_image_processor()
    return LoadedModel(model, adapter_for(model, processor), str(path), str(path))


def _load_transformers(source: str, *, revision: str | None = None, token: str | bool | None = None,
                       trust_remote_code: bool = False) -> LoadedModel:
    model, processor = load_hf_model(source, revision=revision, token=token, trust_remote_code=trust_remote_code)
    directory = Path(source) if Path(source).is_dir() else None
    return LoadedModel(model, adapter_for(model, processor), source, source, directory=directory)


def _load_timm(source: str, *, token: str | bool | None = None) -> LoadedModel:
    model, data_config = load_timm_model(source, token=token)
    directory = Path(source) if Path(source).is_dir() else None
    return LoadedModel(model, adapter_for(model, data_config), source, source, directory=directory)


def load(source: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None,
         trust_remote_code: bool = False, progress: bool = True) -> nn.Module:
    """Load any source — a compressed directory or Hub repo, or an original model — ready for inference;
    `progress=False` silences the libraries' loading bars, as `compress(progress=False)` does."""
    with library_progress_bars(progress):
        return load_source(source, revision=revision, token=token, trust_remote_code=trust_remote_code).model


__all__ = ["CHECKPOINT_SUFFIXES", "LoadedModel", "load", "load_source"]
