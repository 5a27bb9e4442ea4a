"""Calibration examples for `--calib DATA`, read through `datasets` and preprocessed by the model's own processor.

DATA may be a local parquet/arrow/csv/json(l) file (the image column is the first `Image` feature, or a column
named `img`/`image`; text is the `text` column), a folder of images, a single image, a `.txt` file of paragraphs
separated by blank lines (text models), or a Hub dataset id (`uoft-cs/cifar10`, optionally `id:split`).
A seeded random subset of `limit` examples is used, so calibration is reproducible. Each chosen image is checked as
it is read: a bad one is one line naming its file (or its row and column in a table).
"""

from __future__ import annotations

from pathlib import Path

import torch

from compressor.data.images import IMAGE_SUFFIXES, decode, image_files
from compressor.data.loading import (UNLABELLED, LabelledData, image_column, open_dataset, read_paragraphs,
                                     undecoded)
from compressor.errors import SourceError
from compressor.models.base import ModelAdapter


def _dataset_column(dataset, spec: str, want_text: bool) -> str:
    if not want_text:
        return image_column(dataset, spec)
    names = list(dataset.features)
    if "text" in names:
        return "text"
    strings = [n for n in names if getattr(dataset.features[n], "dtype", None) == "string"]
    if strings:
        return strings[0]
    raise SourceError(f"calibration data has no text column (columns: {', '.join(names)}); add a `text` column")


def read_examples(spec: str, want_text: bool, limit: int, seed: int = 0) -> list:
    """Up to `limit` raw examples (PIL images or strings), a seeded random subset of DATA."""
    path = Path(spec).expanduser()
    generator = torch.Generator().manual_seed(seed)
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise SourceError(f"calibration folder {path} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        chosen = torch.randperm(len(files), generator=generator)[:limit].sort().values.tolist()
        return [decode(files[i], str(files[i])) for i in chosen]
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [decode(path, str(path))]
    if path.is_file() and path.suffix.lower() == ".txt":
        if not want_text:
            raise SourceError(f"{path} is a text file but this model takes images; pass images or a dataset")
        paragraphs = read_paragraphs(path)
        chosen = torch.randperm(len(paragraphs), generator=generator)[:limit].sort().values.tolist()
        return [paragraphs[i] for i in chosen]
    if not path.exists() and (spec.startswith((".", "/", "~")) or path.suffix):
        raise SourceError(f"calibration data {spec} does not exist; pass a file, a folder of images or a "
                          "Hub dataset id")
    dataset = open_dataset(spec)
    column = _dataset_column(dataset, spec, want_text)
    if len(dataset) == 0:
        raise SourceError(f"calibration data {spec} is empty")
    chosen = torch.randperm(len(dataset), generator=generator)[:limit].sort().values.tolist()
    if want_text:
        return list(dataset.select(chosen)[column])
    data = LabelledData(spec, UNLABELLED, undecoded(dataset.select(chosen), column), column, rows=chosen)
    return data.images(0, len(chosen))


def load_calibration(spec: str, adapter: ModelAdapter, limit: int = 64, seed: int = 0, batch_size: int = 16,
                     progress: bool = True) -> list[dict[str, torch.Tensor]]:
    """Preprocessed calibration batches for `adapter`'s model."""
    examples = read_examples(spec, adapter.token_layout().text, limit, seed)
    return [adapter.prepare_inputs(examples[start:start + batch_size])
            for start in range(0, len(examples), batch_size)]
