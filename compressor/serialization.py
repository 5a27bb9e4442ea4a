"""Save a compressed model as a self-describing directory, and rebuild it exactly.

The directory holds `config.json` (the base architecture's own config plus a `compression_config` entry),
`model.safetensors` (every weight and buffer, including ACT's hash projections), `recipe.yaml` (the resolved recipe
with every plan), `report.json`, a model card `README.md`, and the model's preprocessing files. Reloading builds
the base architecture from its config, replays the recipe's deterministic rewrites, then loads the weights strictly:
the result computes exactly what the model computed in memory after compression.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from compressor import strict_json
from compressor.atomic_dir import atomic_directory, current_umask
from compressor.errors import BUILD_ERRORS, CompressorError, SourceError
from compressor.loaders import hf_models, timm_models
from compressor.loaders.config_file import read_config
from compressor.loaders.hub_files import hub_snapshot
from compressor.loaders.loaded_model import LoadedModel
from compressor.model_card import render_model_card
from compressor.models import adapter_for
from compressor.ops.int8_format import QUANTIZATION_KEY, quantization_config
from compressor.output_guard import COMPRESSION_KEY
from compressor.recipe import Recipe
from compressor.recipe_runner import apply_recipe
from compressor.version import __version__

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
#: the `compression_config` entry holding the sha256 of the resolved recipe the weights were written with
RECIPE_DIGEST = "recipe_sha256"
RECIPE = "recipe.yaml"
REPORT = "report.json"


def _library_module(library: str):
    if library == "transformers":
        return hf_models
    if library == "timm":
        return timm_models
    raise SourceError(f"unknown library {library!r} in compression_config; this directory was written by a "
                      "newer toolkit or edited by hand")


def _base_config(loaded: LoadedModel) -> dict[str, Any]:
    library = loaded.adapter.library
    module = _library_module(library)
    return module.hf_config_dict(loaded.model) if library == "transformers" else module.timm_config_dict(loaded.model)


def save(result, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `result` (a CompressionResult) to `out`, atomically.

    The recipe written is what was done: a recipe's `distill` step is left out unless the report says it ran.
    """
    if result.recipe.distill() is not None and "distillation" not in result.report:
        result = copy.copy(result)
        result.recipe = result.recipe.without_distill()
    loaded = result.loaded
    recipe_text = result.recipe.to_yaml()
    config = _base_config(loaded)
    config[COMPRESSION_KEY] = {
        "format": "compressor",
        "format_version": FORMAT_VERSION,
        "compressor_version": __version__,
        "library": loaded.adapter.library,
        "family": loaded.adapter.family,
        "base_model": loaded.base_model,
        "seed": result.seed,
        "recipe": RECIPE,
        RECIPE_DIGEST: digest(recipe_text),
    }
    config.update(quantization_config(loaded.model))  # int8 layers, described as compressed-tensors does
    sources = (loaded.directory, loaded.source, loaded.base_model)
    with atomic_directory(out, overwrite=overwrite, sources=sources) as staging:
        (staging / "config.json").write_text(strict_json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        save_model(loaded.model, str(staging / WEIGHTS), metadata={"format": "pt"})
        os.chmod(staging / WEIGHTS, 0o666 & ~current_umask())  # safetensors creates it 0600; the rest is 0644
        (staging / RECIPE).write_text(recipe_text)
        (staging / REPORT).write_text(strict_json.dumps(result.report, indent=2) + "\n")
        processor = loaded.adapter.processor
        if processor is not None and hasattr(processor, "save_pretrained"):
            processor.save_pretrained(str(staging))
        (staging / "README.md").write_text(render_model_card(result, config, load_as=str(out)))
    return Path(out)


def _load_processor(directory: Path, library: str, config: dict[str, Any]):
    module = _library_module(library)
    return module.load_processor(directory, config)


#: what transformers and timm constructors raise on a config with impossible values (e.g. zero attention heads)
_BUILD_ERRORS = (RuntimeError, *BUILD_ERRORS)
#: the entries of `compression_config` a reload needs, and their types
_META_TYPES = {"library": str, "base_model": str, "format_version": int, "seed": int}


def _compression_meta(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The `compression_config` entry popped from `config`, checked, or a one-line error for a damaged file."""
    meta = config.pop(COMPRESSION_KEY)
    if not isinstance(meta, dict) or any(not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool)
                                         for key, kind in _META_TYPES.items()):
        raise SourceError(f"{directory / 'config.json'}: {COMPRESSION_KEY} is damaged (it needs "
                          f"{', '.join(_META_TYPES)} as compress writes them); re-run compress")
    return meta


def load_compressed(directory: str | os.PathLike, source: str | None = None) -> LoadedModel:
    """Rebuild a directory written by `save`: architecture, recipe rewrites, then the saved weights."""
    directory = Path(directory)
    config = read_config(directory)
    meta = _compression_meta(directory, config)
    config.pop(QUANTIZATION_KEY, None)  # describes the int8 layers the recipe's plan rebuilds; not the architecture's
    if meta["format_version"] > FORMAT_VERSION:
        raise SourceError(f"{directory} was written by compressor {meta.get('compressor_version')} (format "
                          f"{meta.get('format_version')}); upgrade compressor to load it")
    for name in (WEIGHTS, RECIPE):
        if not (directory / name).is_file():
            raise SourceError(f"{directory} has no {name}; it is not a complete compressed model (re-run compress)")
    module = _library_module(meta["library"])
    try:
        model = module.build_hf_model(config) if meta["library"] == "transformers" else module.build_timm_model(config)
    except _BUILD_ERRORS as error:
        raise SourceError(f"cannot build the architecture {directory / 'config.json'} describes "
                          f"({type(error).__name__}: {(str(error).strip().splitlines() or ['no detail'])[0]}); "
                          "the file is damaged, re-run compress") from None
    processor = _load_processor(directory, meta["library"], config)
    loaded = LoadedModel(model, adapter_for(model, processor), source or str(directory), meta["base_model"],
                         compression=meta, directory=directory)
    recipe = Recipe.load(str(directory / RECIPE))
    if any(spec.plan is None for spec in recipe.passes()):
        raise SourceError(f"{directory / RECIPE} lacks the per-site plan of a resolved recipe; it was not written "
                          "by compress")
    apply_recipe(loaded, recipe, seed=meta["seed"], progress=False)
    _load_weights(model, directory / WEIGHTS)
    _check_recipe_digest(directory, recipe, meta)  # last: an edit that breaks the structure has its own message above
    model.eval()
    return loaded


def digest(recipe_text: str) -> str:
    return hashlib.sha256(recipe_text.encode()).hexdigest()


def _check_recipe_digest(directory: Path, recipe: Recipe, meta: dict[str, Any]) -> None:
    """The recipe.yaml must be the one the weights were written with: the digest of its resolved form is recorded
    in config.json's `compression_config` (outputs older than the digest carry none and are taken as they are).
    Not in the safetensors metadata: safetensors writes several metadata entries in a random order, which would
    break byte-identical outputs."""
    recorded = meta.get(RECIPE_DIGEST)
    if recorded is not None and recorded != digest(recipe.to_yaml()):
        raise SourceError(f"{directory / RECIPE} does not match the weights: it was changed after the model was "
                          "written; restore the recipe.yaml written with them, or re-run compress")


def _load_weights(model: nn.Module, path: Path) -> None:
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, ValueError) as error:
        raise SourceError(f"{path} is corrupt or truncated ({str(error).splitlines()[0]}); re-download or "
                          "re-run compress") from None
    except RuntimeError as error:  # shape mismatch
        raise SourceError(f"{path} does not match the architecture its config and recipe describe "
                          f"({str(error).splitlines()[-1].strip()}); the files come from different models") from None
    if missing or unexpected:
        detail = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}")
        raise SourceError(f"{path} does not match the recipe ({len(missing)} missing, {len(unexpected)} unexpected "
                          f"weights, e.g. {detail}); the weights and recipe.yaml come from different runs")


def download_compressed(repo_id: str, *, revision: str | None = None, token: str | bool | None = None) -> LoadedModel:
    """Fetch a compressed model from the Hub (every file of the repository), then rebuild it."""
    return load_compressed(hub_snapshot(repo_id, revision=revision, token=token), source=repo_id)


__all__ = ["CompressorError", "download_compressed", "load_compressed", "save"]
