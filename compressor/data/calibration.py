"""Calibration examples for `--calib DATA`, read through `datasets` and preprocessed by the model's own processor.

DATA may be a local parquet/arrow/csv/json(l) file (the image column is the first `Image` feature, or a column
named `img`/`image`; text is the `text` column), a folder of images, a single image, a `.txt` file of paragraphs
separated by blank lines (text models), or a Hub dataset id (`uoft-cs/cifar10`, optionally `id:split`).
A seeded random subset of `limit` examples is used, so calibration is reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compressor.data.loading import image_column, open_dataset, read_paragraphs
from compressor.errors import SourceError
from compressor.models.base import ModelAdapter

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _open_image(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


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
        files = _image_files(path)
        if not files:
            raise SourceError(f"calibration folder {path} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        chosen = torch.randperm(len(files), generator=generator)[:limit].sort().values.tolist()
        return [_open_image(files[i]) for i in chosen]
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [_open_image(path)]
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
    rows = dataset.select(chosen)[column]
    return [row.convert("RGB") if hasattr(row, "convert") else row for row in rows]


def load_calibration(spec: str, adapter: ModelAdapter, limit: int = 64, seed: int = 0, batch_size: int = 16,
                     progress: bool = True) -> list[dict[str, torch.Tensor]]:
    """Preprocessed calibration batches for `adapter`'s model."""
    examples = read_examples(spec, adapter.token_layout().text, limit, seed)
    return [adapter.prepare_inputs(examples[start:start + batch_size])
            for start in range(0, len(examples), batch_size)]
