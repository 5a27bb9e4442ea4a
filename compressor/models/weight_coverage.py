"""Weights must describe the model exactly: no tensor left to random initialisation, none ignored, none reshaped.

transformers completes a checkpoint that lacks tensors with fresh random ones and only logs it, so a damaged or
mismatched checkpoint would be compressed, scored far worse and reported as if nothing were wrong. Two checks close
that gap:

- before the model is built, its size is bounded by the weights' safetensors headers (tensor count and elements):
  a config.json describing a much larger model than its weights (100,000 layers, say) is refused within
  milliseconds, while construction has barely begun, instead of hanging or allocating gigabytes;
- after loading, transformers' own loading report must be empty: missing, unexpected and mis-shaped tensors are
  named, the first few of each, as strict loading reports them.

Counting (not matching names) keeps the first check independent of the key renames transformers applies to older
checkpoints; the second check sees the names after those renames.
"""

from __future__ import annotations

import json
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch

from compressor.errors import SourceError

#: a model may register up to this many times the header's tensors (tied weights register twice) plus a margin
_TENSOR_FACTOR, _TENSOR_MARGIN = 2, 64
#: ... and this many times its elements, plus a margin (buffers are not counted; parameters only)
_ELEMENT_FACTOR, _ELEMENT_MARGIN = 2, 1_000_000
#: how many names of each kind an error shows
SHOWN = 3
#: safetensors' own cap on the header length
_MAX_HEADER = 100_000_000


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names → dtype, shape, offsets), read without touching the data."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SourceError(f"{path} is too short to be a safetensors file; re-save the model with save_pretrained")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER:
            raise SourceError(f"{path} is not a valid safetensors file (header length {length}); re-save the model")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise SourceError(f"{path} has a corrupt safetensors header; re-save the model with save_pretrained"
                              ) from None
    if not isinstance(header, dict):
        raise SourceError(f"{path} has a corrupt safetensors header; re-save the model with save_pretrained")
    return header


def header_totals(paths: Iterable[Path]) -> tuple[int, int]:
    """(tensor count, element count) over the safetensors files `paths`."""
    tensors = elements = 0
    for path in paths:
        for name, entry in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
                raise SourceError(f"{path} has a corrupt safetensors header (tensor {name!r}); re-save the model")
            tensors += 1
            elements += int(torch.Size(shape).numel())
    return tensors, elements


class _LargerThanWeights(Exception):
    """Raised from inside model construction to stop it once the model outgrows its weights."""


@contextmanager
def bounded_by_weights(totals: tuple[int, int], source: str) -> Iterator[None]:
    """Stop any model construction inside the block as soon as its parameters clearly outgrow `totals`, with one
    line saying config.json and the weights disagree."""
    tensors, elements = totals
    tensor_limit = _TENSOR_FACTOR * tensors + _TENSOR_MARGIN
    element_limit = _ELEMENT_FACTOR * elements + _ELEMENT_MARGIN
    seen = {"tensors": 0, "elements": 0}

    def count(module, name, parameter):
        if parameter is None:
            return None
        # a parameter put in the place of another (transformers 5.25 does so while loading the weights) does not
        # grow the model: without this, the full-size DETR-R50 counted twice its size and was refused
        previous = module._parameters.get(name)
        seen["tensors"] += previous is None
        seen["elements"] += parameter.numel() - (previous.numel() if previous is not None else 0)
        if seen["tensors"] > tensor_limit or seen["elements"] > element_limit:
            raise _LargerThanWeights
        return None

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(count)
    try:
        yield
    except _LargerThanWeights:
        raise SourceError(
            f"the config.json of {source} describes a model larger than its weights (more than "
            f"{seen['tensors'] - 1:,} tensors or {seen['elements']:,} values, the weights hold {tensors:,} tensors and "
            f"{elements:,} values): config.json and model.safetensors come from different models; restore the "
            "config.json saved with these weights") from None
    finally:
        handle.remove()


def _first(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def check_loading_report(info: dict, source: str, model_class: str) -> None:
    """Fail with one line unless transformers' loading report (`output_loading_info=True`) is empty."""
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing {_first(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected {_first(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        mismatched = (entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info["mismatched_keys"])
        problems.append(f"mis-shaped {_first(mismatched)}")
    if not problems:
        return
    head_missing = any(key.split(".")[0] in ("classifier", "class_labels_classifier", "bbox_predictor", "head",
                                             "lm_head", "fc")
                       for key in info.get("missing_keys") or ())
    hint = ("; if the checkpoint has no task head, set `architectures` in config.json to the bare model class to "
            "load it headless" if head_missing else
            "; the weights and config.json come from different models: restore the files saved together")
    raise SourceError(f"the weights of {source} do not match {model_class} ({'; '.join(problems)}){hint}")
