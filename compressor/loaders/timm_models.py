"""Loading timm models from the Hub or a local directory in timm's Hub layout, and rebuilding them from a config.

timm is imported inside the functions that need it: importing it costs seconds (it pulls in torchvision).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from torch import nn

from compressor.errors import BUILD_ERRORS, CompressorError, SourceError, UnsupportedModelError
from compressor.loaders.config_file import CONFIG, read_config
from compressor.loaders.hub_files import first_line, hub_file
from compressor.models import ADAPTER_CLASSES, SUPPORTED_FAMILIES
from compressor.models.timm_common import TimmAdapter
from compressor.models.weight_coverage import bounded_by_weights, header_totals

#: the weight files read from the Hub, best first (timm's own order); .bin is read with torch.load(weights_only=True)
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: what a timm source is, for the messages
_KIND = "timm model"
_LAYOUT = "a directory in timm's Hub layout (config.json with \"architecture\" + model.safetensors)"


def _fetch_hub_weights(repo_id: str, revision: str | None, token: str | bool | None) -> None:
    """The weights into the Hub cache beside config.json: the first of HUB_WEIGHT_FILES the repository has."""
    for filename in HUB_WEIGHT_FILES[:-1]:
        if hub_file(repo_id, filename, revision=revision, token=token, required=False) is not None:
            return
    hub_file(repo_id, HUB_WEIGHT_FILES[-1], revision=revision, token=token, kind=_KIND)


def _split_source(source: str) -> tuple[Path | None, str | None, str | None]:
    """(local directory, Hub repo id, revision) for a source string; exactly one of the first two is set."""
    if source.startswith("local-dir:"):
        return Path(source.removeprefix("local-dir:")).expanduser(), None, None
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser(), None, None
    repo = source.removeprefix("hf-hub:")
    if repo.count("/") == 1 and not repo.startswith((".", "/", "~")):
        repo_id, _, revision = repo.partition("@")
        return None, repo_id, revision or None
    raise SourceError(f"{source!r} is neither a local timm model directory nor a Hub id; pass a directory with "
                      "config.json and model.safetensors, or a Hub id like timm/vit_base_patch16_224.augreg_in1k")


def _read_timm_config(directory: Path) -> dict[str, Any]:
    """config.json of a timm model directory, which must name its timm `architecture`."""
    config = read_config(directory, expected=_LAYOUT)
    path = directory / CONFIG
    if "architecture" not in config:
        raise SourceError(f"{path} has no \"architecture\" entry, so it is not a timm config; expected {_LAYOUT}")
    if not isinstance(config["architecture"], str):
        raise SourceError(f"{path}: \"architecture\" must be a timm model name, got {config['architecture']!r}")
    return config


def check_supported_architecture(architecture: str, where: str) -> None:
    """Refuse, before any weight is read, an architecture that no timm adapter describes."""
    import timm
    from timm.models import is_model_in_modules

    modules = [module for cls in ADAPTER_CLASSES if issubclass(cls, TimmAdapter) for module in cls.timm_modules]
    if not timm.is_model(architecture):
        found = f"timm architecture {architecture!r}, unknown to timm {timm.__version__}"
    elif not is_model_in_modules(architecture, modules):
        found = f"timm architecture {architecture!r}"
    else:
        return
    raise UnsupportedModelError(f"{where}: unsupported {found}; supported: {SUPPORTED_FAMILIES}")


def _create_from_directory(directory: Path, *, pretrained: bool) -> nn.Module:
    """timm's own local-dir loader: it reads the config, builds with its model_args, then loads the weights
    (safetensors first; other formats with torch.load(weights_only=True), never unrestricted pickle)."""
    import timm
    from safetensors import SafetensorError

    weights = directory / "model.safetensors"
    bound = bounded_by_weights(header_totals([weights]), str(directory)) if pretrained and weights.is_file() \
        else nullcontext()
    try:
        with bound:
            return timm.create_model(f"local-dir:{directory}", pretrained=pretrained).eval()
    except (RuntimeError, OSError, SafetensorError, *BUILD_ERRORS) as error:
        detail = first_line(error)[:300]
        raise SourceError(f"cannot build the timm model in {directory}: {detail}; re-save it with "
                          "timm.models.save_for_hf(model, dir, safe_serialization=True)") from None


def load_timm_model(source: str | os.PathLike, *, token: str | bool | None = None) -> tuple[nn.Module, dict]:
    """A pretrained timm model in eval mode and its data config, from the Hub or a local directory.

    `source` is `timm/<name>` or `hf-hub:<owner>/<name>[@revision]` (any Hub repo in timm's layout), or a local
    directory (optionally `local-dir:<path>`) holding config.json + model.safetensors as timm's `save_for_hf` /
    `push_to_hf_hub` write them. The architecture is checked against the supported families from config.json
    alone, so an unsupported model fails before any weight is downloaded. Hub files are fetched with `token`
    and then built exactly like a local directory, from the Hub cache.
    """
    from timm.data import resolve_input_data_config

    directory, repo_id, revision = _split_source(str(source))
    if repo_id is not None:
        directory = hub_file(repo_id, CONFIG, revision=revision, token=token, kind=_KIND).parent
    config = _read_timm_config(directory)
    check_supported_architecture(config["architecture"], str(source))
    if repo_id is not None:
        _fetch_hub_weights(repo_id, revision, token)
    model = _create_from_directory(directory, pretrained=True)
    if repo_id is not None:  # record where the weights really come from, as timm's hf-hub loader would
        model.pretrained_cfg.update(source="hf-hub", hf_hub_id=repo_id if revision is None else f"{repo_id}@{revision}")
        model.pretrained_cfg.pop("file", None)
    return model, resolve_input_data_config(model)


def timm_config_dict(model: nn.Module) -> dict[str, Any]:
    """The config.json timm's `save_for_hf` writes for `model`, `model_args` included.

    timm 1.0.31's `create_model` records the keyword arguments a model was built with (`model._model_args`),
    so non-default architectures (a 2-block ViT, a ResNet with layers=(1, 1, 1, 1)) rebuild identically.
    """
    from timm.models._hub import save_config_for_hf  # what save_for_hf / push_to_hf_hub call; not re-exported

    if not hasattr(model, "pretrained_cfg"):
        raise CompressorError(f"{type(model).__name__} was not built by timm.create_model, so its architecture "
                              "cannot be recorded; create it with timm.create_model(name, **kwargs)")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "config.json"
        try:
            save_config_for_hf(model, path)
        except ValueError as error:  # a constructor argument that JSON cannot hold (a class, a function)
            raise CompressorError(f"cannot record the timm architecture of {type(model).__name__}: {error}") from None
        return json.loads(path.read_text())


def build_timm_model(config: dict[str, Any]) -> nn.Module:
    """The architecture a timm config describes, with random weights and no download (eval mode).

    Used to reload a compressed model before its weights are loaded. The config goes through timm's own
    local-dir parsing, so the model is built with exactly the arguments a timm load of that config would use.
    """
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "config.json").write_text(json.dumps(config))
        model = _create_from_directory(Path(scratch), pretrained=False)
    for key in ("file", "source"):  # the scratch directory is gone: do not point at it
        model.pretrained_cfg.pop(key, None)
    return model


def load_processor(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The data config of a saved timm model: timm keeps its resolved preprocessing in config.json's
    `pretrained_cfg`, so `directory` holds nothing more to read (the signature matches the transformers side)."""
    from timm.data import resolve_data_config

    saved = config.get("pretrained_cfg") or config  # older single-dict configs keep the fields at the top
    pretrained_cfg = {key: tuple(value) if isinstance(value, list) else value for key, value in saved.items()}
    return resolve_data_config(pretrained_cfg=pretrained_cfg)
