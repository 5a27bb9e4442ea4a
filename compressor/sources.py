"""Turn whatever the user names as a model into a loaded model and its adapter.

A source is a Hub id (`facebook/detr-resnet-50`; timm models as `timm/<name>` or `hf-hub:timm/<name>`), a local
`save_pretrained` directory (transformers or timm layout), a directory written by `compress` (recognised by the
`compression_config` entry of its config.json), a CIFAR ResNet checkpoint file of akamaster/pytorch_resnet_cifar10
(`.th`, or its `.safetensors` conversion), or an `nn.Module` already in memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from compressor.errors import SourceError
from compressor.hub_reachability import cache_only_when_hub_unreachable
from compressor.models import ModelAdapter, adapter_for
from compressor.output_guard import COMPRESSION_KEY

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A model ready for passes: the module, its adapter, and where it came from."""

    model: nn.Module
    adapter: ModelAdapter
    source: str
    #: the original (uncompressed) model this one derives from: the source itself unless it is a compress output
    base_model: str
    #: the `compression_config` of a compress output, else None
    compression: dict[str, Any] | None = None
    #: local directory the files came from (None for in-memory models)
    directory: Path | None = None


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a model directory, with a one-line error when it is missing or not JSON."""
    path = directory / "config.json"
    if not path.is_file():
        raise SourceError(
            f"{directory} has no config.json: expected a save_pretrained directory (transformers or timm) or a "
            "directory written by `cli.py compress`")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SourceError(f"{path} is not valid JSON ({error}); re-save the model with save_pretrained") from None
    if not isinstance(config, dict):
        raise SourceError(f"{path} holds a JSON {type(config).__name__}, not an object of settings; re-save the model "
                          "with save_pretrained")
    return config


def _is_timm_config(config: dict[str, Any]) -> bool:
    return "architecture" in config and "model_type" not in config


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return " (HF_HUB_OFFLINE is set: use a local directory, or unset HF_HUB_OFFLINE to download)"
    return ""


def _download_config(repo_id: str, revision: str | None, token: str | bool | None) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision, token=token)
    except Exception as error:  # huggingface_hub raises many types: offline, 404, auth, network
        reason = type(error).__name__
        raise SourceError(
            f"cannot fetch {repo_id!r} from the Hugging Face Hub ({reason}){_offline_hint()}; check the id, "
            "your network and `hf auth login` for private models, or pass a local directory") from None
    return json.loads(Path(path).read_text())


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
    with cache_only_when_hub_unreachable():
        config = _download_config(text, revision, token)
        if COMPRESSION_KEY in config:
            from compressor.serialization import download_compressed

            return download_compressed(text, revision=revision, token=token)
        if _is_timm_config(config):
            return _load_timm(f"hf-hub:{text}", token=token)
        return _load_transformers(text, revision=revision, token=token, trust_remote_code=trust_remote_code)


def _load_directory(path: Path, *, trust_remote_code: bool) -> LoadedModel:
    config = read_config(path)
    if COMPRESSION_KEY in config:
        from compressor.serialization import load_compressed

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
    from compressor.models.hf_common import load_hf_model

    model, processor = load_hf_model(source, revision=revision, token=token, trust_remote_code=trust_remote_code)
    directory = Path(source) if Path(source).is_dir() else None
    return LoadedModel(model, adapter_for(model, processor), source, source, directory=directory)


def _load_timm(source: str, *, token: str | bool | None = None) -> LoadedModel:
    from compressor.models.timm_common import load_timm_model

    model, data_config = load_timm_model(source, token=token)
    directory = Path(source) if Path(source).is_dir() else None
    return LoadedModel(model, adapter_for(model, data_config), source, source, directory=directory)
